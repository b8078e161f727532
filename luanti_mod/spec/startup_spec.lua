local H = require("helpers")
local S = H.startup

describe("choosing the transport", function()
	local function choose(t) return (S.transport(t)) end

	it("takes the WebSocket when trusted with LuaSocket and the URL is ws://", function()
		assert.equal("websocket", choose({transport = "auto", url = "ws://h/ws/luanti/", socket = true, http = true}))
	end)

	it("takes the HTTP API when untrusted, when asked, or for an https:// URL", function()
		assert.equal("http", choose({transport = "auto", url = "ws://h/ws/luanti/", socket = false, http = true}))
		assert.equal("http", choose({transport = "http", url = "ws://h/ws/luanti/", socket = true, http = true}))
		assert.equal("http", choose({transport = "auto", url = "https://h/http/luanti/", socket = true, http = true}))
		assert.equal("http", choose({transport = "auto", url = "wss://h/ws/luanti/", socket = true, http = true}))
	end)

	it("says why when neither can be used", function()
		local t, why = S.transport({transport = "auto", url = "ws://h/", socket = false, http = false,
			socket_problem = "the mod is not trusted"})
		assert.is_nil(t)
		assert.matches("not trusted", why)
		assert.matches("secure.http_mods = voyager", why)
		t, why = S.transport({transport = "http", url = "ws://h/", socket = true, http = false})
		assert.is_nil(t)
		assert.matches("secure.http_mods", why)
		t, why = S.transport({transport = "websocket", url = "https://h/", socket = true, http = true})
		assert.is_nil(t)
		assert.matches("ws://", why)
	end)
end)

describe("the default give allowlist", function()
	local function mods(...)
		local set = {}
		for _, m in ipairs({...}) do set[m] = true end
		return function(name) return set[name] == true end
	end

	it("follows the game's id, or the mods loaded when the engine does not say it", function()
		assert.equal("minetest_game", S.game("minetest_game", mods()))
		assert.equal("mineclonia", S.game(nil, mods("mcl_core")))
		assert.equal("minetest_game", S.game(nil, mods("default")))
		assert.equal("devtest", S.game(nil, mods("basenodes")))
		assert.same({"mcl_core:apple", "mcl_torches:torch", "mcl_farming:bread"}, S.default_give("mineclone2"))
		assert.same({"basenodes:apple", "basetools:pick_wood"}, S.default_give("devtest"))
	end)

	it("is empty on a game it does not know", function()
		assert.is_nil(S.game(nil, mods("somethingelse")))
		assert.same({}, S.default_give(nil))
		assert.same({}, S.default_give("asuna"))
	end)

	it("reports the items the game does not register", function()
		assert.same({"default:bread"}, S.missing({"default:apple", "default:bread"}, {["default:apple"] = {}}))
	end)
end)

describe("the start-up checks in the server", function()
	local F = require("fake_core")

	it("report an allowlist item the game does not register once, at warning level", function()
		local core = F.load_mod({["voyager.give_allowlist"] = "default:apple,default:unknown_thing"}, nil, {})
		core.run_mods_loaded()
		local hits = 0
		for _, l in ipairs(core.logs) do
			if l.msg:find("does not register: default:unknown_thing", 1, true) then
				hits = hits + 1
				assert.equal("warning", l.level)
			end
		end
		assert.equal(1, hits)
	end)

	it("choose the running game's default when the allowlist is unset, else none with a warning", function()
		local core, v = F.load_mod({}, nil, {game = "minetest_game"})
		core.run_mods_loaded()
		assert.is_true(v.settings.give_allowed["default:apple"])
		core, v = F.load_mod({}, nil, {game = "asuna"})
		core.run_mods_loaded()
		assert.same({}, v.settings.give_allowlist)
		assert.equal("warning", core.logged("no default voyager.give_allowlist").level)
	end)

	it("fall back at once, saying why, when untrusted with no HTTP API", function()
		local core, v = F.load_mod({}, nil, {http = false})
		assert.truthy(core.logged("secure.http_mods = voyager"))
		core.run_globalsteps()
		assert.is_true(v.client.in_fallback())
	end)
end)
