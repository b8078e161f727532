local F = require("fake_core")
local H = require("helpers")

describe("actions", function()
	local core, v, npc, alice

	before_each(function()
		core, v = F.load_mod({["voyager.give_allowlist"] = "default:apple,default:unknown_thing"})
		npc = assert(v.spawn_npc({x = 0, y = -0.5, z = 0}, "guide", "Bob"))
		alice = core.add_player("alice", {x = 2, y = -0.5, z = 0})
	end)

	local function run(name, args, player)
		return v.run_action(npc, {name = name, args = args}, {player = player or "alice"})
	end

	it("moves a few blocks to a free place", function()
		assert.is_true((run("move", {"2", "0", "1"})))
		assert.same({x = 2, y = -0.5, z = 1}, npc.object.moved_to)
	end)

	it("clamps long moves", function()
		assert.is_true((run("move", {"50", "0", "0"})))
		assert.equal(v.MOVE_MAX, npc.object.moved_to.x)
	end)

	it("steps up onto a block", function()
		core.set_node({x = 1, y = 0, z = 0}, {name = "test:stone"})
		assert.is_true((run("move", {"1", "0", "0"})))
		assert.same({x = 1, y = 0.5, z = 0}, npc.object.moved_to)
	end)

	it("refuses a move into a wall or an unloaded area", function()
		for y = -1, 3 do core.set_node({x = 1, y = y, z = 0}, {name = "test:stone"}) end
		local ok, why = run("move", {"1", "0", "0"})
		assert.is_false(ok)
		assert.matches("no free place", why)
		for y = -2, 2 do core.set_node({x = 0, y = y, z = 2}, {name = "ignore"}) end
		assert.is_false((run("move", {"0", "0", "2"})))
		assert.is_nil(npc.object.moved_to)
	end)

	it("follows an online player and stops", function()
		assert.is_true((run("follow", {})))
		assert.equal("alice", npc._follow)
		assert.is_true((run("stop_following", {})))
		assert.is_nil(npc._follow)
		assert.is_false((run("follow", {"nobody"})))
	end)

	it("does not follow or face a player who is far away", function()
		core.add_player("far", {x = 500, y = 0, z = 0})
		assert.is_false((run("follow", {"far"})))
		assert.is_false((run("face", {"far"})))
	end)

	it("faces a player or a direction", function()
		assert.is_true((run("face", {"alice"})))
		assert.equal(core.dir_to_yaw({x = 2, y = 0, z = 0}), npc.object.yaw)
		assert.is_true((run("face", {"0", "-1"})))
		assert.equal(core.dir_to_yaw({x = 0, y = 0, z = -1}), npc.object.yaw)
		assert.is_false((run("face", {"0", "0"})))
	end)

	it("jumps only from the ground", function()
		assert.is_true((run("jump", {})))
		assert.equal(6.5, npc.object.vel.y)
		assert.is_false((run("jump", {})))
	end)

	it("says cleaned text to players nearby", function()
		core.add_player("faraway", {x = 300, y = 0, z = 0})
		assert.is_true((run("say", {"Hello", "\27(c@#ff0000)friend"})))
		assert.same({"<Bob> Hello friend"}, core.chat_of("alice"))
		assert.same({}, core.chat_of("faraway"))
		assert.is_false((run("say", {})))
	end)

	it("gives allowlisted, registered items, clamped, into the inventory", function()
		assert.is_true((run("give", {"default:apple", "500"})))
		assert.same({"default:apple 8"}, alice.inv.items)
		assert.matches("gives you 8 × Apple%.", core.chat_of("alice")[1])
	end)

	it("refuses items outside the allowlist or not registered", function()
		assert.is_false((run("give", {"default:diamond", "1"})))
		local ok, why = run("give", {"default:unknown_thing"})
		assert.is_false(ok)
		assert.matches("not registered", why)
		assert.same({}, alice.inv.items)
	end)

	it("refuses to give into a full inventory or to an absent player", function()
		core.add_player("carol", {x = 1, y = 0, z = 0}, {full = true})
		assert.is_false((run("give", {"default:apple"}, "carol")))
		assert.is_false((run("give", {"default:apple"}, "ghost")))
	end)

	it("ignores unknown actions with a log line", function()
		local ok, why = run("dance", {})
		assert.is_false(ok)
		assert.equal("unknown action", why)
		assert.truthy(core.logged("action dance"))
	end)

	it("accepts args as a string too", function()
		assert.is_true((v.run_action(npc, {name = "move", args = "1 0 0"}, {player = "alice"})))
	end)

	it("contains a failing action", function()
		v.register_action("explode", function() error("kaboom") end)
		local ok, why = run("explode", {})
		assert.is_false(ok)
		assert.matches("kaboom", why)
	end)

	it("skips actions for a removed NPC", function()
		v.remove_npc(npc)
		assert.is_false((run("jump", {})))
	end)

	it("reports every action as an event", function()
		local seen = {}
		v.register_on_event(function(ev) if ev.type == "action" then seen[#seen + 1] = ev end end)
		run("jump", {})
		assert.same({"jump", true}, {seen[1].name, seen[1].ok})
		local _ = H
	end)
end)
