local F = require("fake_core")
local H = require("helpers")

describe("talking to NPCs", function()
	local core, v, env, npc, c, events

	before_each(function()
		env = H.make_client({fallback_after = 3, reply_timeout = 30})
		core, v = F.load_mod({}, env.client)
		events = {}
		v.register_on_event(function(ev) events[#events + 1] = ev end)
		env.t = 0
		c = env.connect({"guide"})
		npc = assert(v.spawn_npc({x = 0, y = -0.5, z = 0}, "guide", "Bob"))
		core.add_player("alice", {x = 2, y = -0.5, z = 0})
		core.privs.alice = {voyager_npc = true}
	end)

	local function events_of(kind)
		local out = {}
		for _, e in ipairs(events) do if e.type == kind then out[#out + 1] = e end end
		return out
	end

	it("asks with the NPC's persona and context, streams the reply, runs actions", function()
		local id = v.talk("alice", "Bob", "Hello!")
		local a = c.sent_of("ask")[1]
		assert.equal(id, a.id)
		assert.same({"guide", "alice", "Hello!", npc._data.id}, {a.persona, a.player, a.text, a.npc})
		assert.same({0, 0, 0}, a.context.pos)
		assert.equal(0.5, a.context.time_of_day)
		assert.truthy(a.context.nearby)
		assert.is_true(#a.context.nearby <= v.NEARBY_MAX)
		c.server({type = "delta", id = id, text = "Hi alice. I "})
		c.server({type = "delta", id = id, text = "will jump"})
		env.client.step()
		assert.same({"<Bob> Hi alice."}, core.chat_of("alice"))
		c.server({type = "reply", id = id, exchange = "ex-1", text = "Hi alice. I will jump!",
			actions = {{name = "jump", args = {}}, {name = "fly", args = {}}},
			blocked = {{name = "give", args = {"default:diamond", "9"}, rule = "valuables"}}})
		env.client.step()
		assert.same({"<Bob> Hi alice.", "<Bob> I will jump!"}, core.chat_of("alice"))
		assert.equal(6.5, npc.object.vel.y)
		assert.truthy(core.logged("blocked by policy %(valuables%)"))
		assert.truthy(core.logged("action fly"))
		assert.equal(2, #events_of("action"))
		assert.equal(1, #events_of("blocked"))
		assert.equal("ex-1", v.last_reply("alice").exchange)
	end)

	it("lets one ask per player run at a time", function()
		assert.truthy(v.talk("alice", npc, "one"))
		local id, why = v.talk("alice", npc, "two")
		assert.is_nil(id)
		assert.equal("busy", why)
	end)

	it("turns error codes into friendly lines", function()
		for code, pattern in pairs({npc_frozen = "moderator", overloaded = "busy", timeout = "too long",
				rate_limited = "too fast", unavailable = "lost in thought"}) do
			local id = v.talk("alice", npc, "hi")
			c.server({type = "error", id = id, code = code, message = "x"})
			env.client.step()
			local lines = core.chat_of("alice")
			assert.matches(pattern, lines[#lines])
		end
	end)

	it("rates the last reply with its exchange", function()
		local id = v.talk("alice", npc, "hi")
		c.server({type = "reply", id = id, exchange = "ex-7", text = "Yo", actions = {}, blocked = {}})
		env.client.step()
		assert.equal("ex-7", v.rate("alice", -1, "too short"))
		local r = c.sent_of("rate")[1]
		assert.same({"ex-7", "alice", -1, "too short"}, {r.exchange, r.player, r.score, r.reason})
		c.server({type = "rated", exchange = "ex-7"})
		env.client.step()
		assert.matches("Thanks", core.chat_of("alice")[#core.chat_of("alice")])
		assert.is_nil(v.rate("bob", 1))
	end)

	it("links a player with a code", function()
		assert.is_true(v.link("alice", "CODE42"))
		assert.same({"alice", "CODE42"}, {c.sent_of("link")[1].player, c.sent_of("link")[1].code})
		c.server({type = "linked", player = "alice"})
		env.client.step()
		assert.equal(1, #events_of("linked"))
	end)

	it("cancels a player's ask when they leave", function()
		local id = v.talk("alice", npc, "hi")
		core.remove_player("alice")
		assert.equal(id, c.sent_of("cancel")[1].id)
	end)

	it("cancels an NPC's asks when it is removed", function()
		local id = v.talk("alice", npc, "hi")
		v.remove_npc(npc)
		assert.equal(id, c.sent_of("cancel")[1].id)
		assert.is_nil(v.get_npc("Bob"))
	end)

	it("answers with canned lines in fallback, and with the model again after reconnecting", function()
		c.push({type = "close", code = 1006})
		env.client.step()
		env.advance(4)
		assert.is_true(v.in_fallback())
		assert.equal("fallback", v.talk("alice", npc, "hello?"))
		core.run_afters(2)
		local line = core.chat_of("alice")[1]
		assert.matches("^<Bob> ", line)
		assert.truthy(events_of("reply")[1].fallback)
		env.advance(100)
		local c2 = env.conn()
		c2.push({type = "open"})
		env.client.step()
		c2.server({type = "welcome", protocol = 1, personas = {"guide"}})
		env.client.step()
		assert.is_false(v.in_fallback())
		local id = v.talk("alice", npc, "back?")
		assert.equal(id, c2.sent_of("ask")[1].id)
	end)

	it("wanders while in fallback and stands still otherwise", function()
		local def = core.entities["voyager:npc"]
		core.time = 100
		for _ = 1, 30 do core.time = core.time + 1; def.on_step(npc, 1, {}) end
		assert.is_nil(npc.object.moved_to)
		c.push({type = "close", code = 1006})
		env.client.step()
		env.advance(4)
		math.randomseed(1)
		for _ = 1, 60 do core.time = core.time + 1; def.on_step(npc, 1, {}) end
		assert.is_not_nil(npc.object.moved_to)
	end)
end)

describe("chat, forms and commands", function()
	local core, v, env, c, npc

	before_each(function()
		env = H.make_client({fallback_after = 3})
		core, v = F.load_mod({}, env.client)
		c = env.connect({"guide", "smith"})
		core.add_player("alice", {x = 2, y = -0.5, z = 0})
		npc = assert(v.spawn_npc({x = 0, y = -0.5, z = 0}, "guide", "Bob"))
	end)

	it("turns '@Name text' into an ask and swallows the message", function()
		assert.is_true(core.on_chat[1]("alice", "@bob how are you?"))
		assert.equal("how are you?", c.sent_of("ask")[1].text)
		assert.is_false(core.on_chat[1]("alice", "@nobody hi"))
		assert.is_false(core.on_chat[1]("alice", "plain chat"))
	end)

	it("opens a talk form on right-click and asks from it", function()
		local alice = core.get_player_by_name("alice")
		core.entities["voyager:npc"].on_rightclick(npc, alice)
		assert.equal(v.TALK_FORM, core.formspecs.alice.formname)
		assert.matches("field%[", core.formspecs.alice.fs)
		core.on_fields[1](alice, v.TALK_FORM, {text = "Hi Bob", say = "Say", quit = "true"})
		assert.equal("Hi Bob", c.sent_of("ask")[1].text)
	end)

	it("does not ask when the form is closed with Escape", function()
		local alice = core.get_player_by_name("alice")
		core.entities["voyager:npc"].on_rightclick(npc, alice)
		core.on_fields[1](alice, v.TALK_FORM, {text = "typed", quit = "true"})
		assert.equal(0, #c.sent_of("ask"))
	end)

	it("needs the voyager_npc privilege to spawn or remove", function()
		local ok, msg = core.commands.npc.func("alice", "spawn guide Ann")
		assert.is_false(ok)
		assert.matches("voyager_npc", msg)
		assert.truthy(core.privileges.voyager_npc)
	end)

	it("spawns, lists and removes NPCs", function()
		core.privs.alice = {voyager_npc = true}
		local ok, msg = core.commands.npc.func("alice", "spawn smith Ann")
		assert.is_true(ok, msg)
		assert.truthy(v.get_npc("Ann"))
		assert.matches("Ann %[smith%]", select(2, core.commands.npc.func("alice", "list")))
		assert.is_false((core.commands.npc.func("alice", "spawn wizard")))
		assert.is_false((core.commands.npc.func("alice", "spawn guide bad*name")))
		assert.is_true((core.commands.npc.func("alice", "remove")))
		assert.is_true((core.commands.npc.func("alice", "remove")))
		assert.equal(0, #v.list_npcs())
	end)

	it("rates with /rate and links with /voyager link", function()
		assert.is_false((core.commands.rate.func("alice", "sideways")))
		assert.is_false((core.commands.rate.func("alice", "up")))
		assert.is_true((core.commands.voyager.func("alice", "link ABC-123")))
		assert.equal("ABC-123", c.sent_of("link")[1].code)
		local ok, msg = core.commands.voyager.func("alice", "status")
		assert.is_true(ok)
		assert.matches("ready", msg)
	end)

	it("keeps the NPC's identity in its staticdata", function()
		local def = core.entities["voyager:npc"]
		local data = def.get_staticdata(npc)
		local copy = core.add_entity({x = 5, y = 0, z = 5}, "voyager:npc", data)
		assert.is_nil(copy) -- a duplicate of a loaded NPC is removed
		v.remove_npc(npc)
		local again = core.add_entity({x = 5, y = 0, z = 5}, "voyager:npc", data):get_luaentity()
		assert.same(npc._data, again._data)
		assert.equal("Bob [guide]", again.object.nametag.text)
		assert.is_nil(core.add_entity({x = 5, y = 0, z = 5}, "voyager:npc", "garbage"))
	end)
end)

describe("an untrusted mod", function()
	it("answers with canned lines and never touches the network", function()
		local core, v = F.load_mod({}, nil)
		core.add_player("alice", {x = 1, y = 0, z = 0})
		local npc = assert(v.spawn_npc({x = 0, y = -0.5, z = 0}, "guide", "Bob"))
		assert.is_true(v.in_fallback())
		assert.equal("fallback", v.talk("alice", npc, "hi"))
		core.run_afters(2)
		assert.matches("^<Bob> ", core.chat_of("alice")[1])
		assert.equal("disabled", v.status().state)
	end)
end)
