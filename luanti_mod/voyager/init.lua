-- voyager: NPCs that talk and act through the Luanti Voyager platform.
-- This file only gets the socket library and loads the split files.

local modpath = core.get_modpath(core.get_current_modname())

-- The insecure environment is asked for once, here, and only LuaSocket's C
-- core is taken from it ("socket" itself fails under mod security). It is
-- handed to net.lua as an argument and never stored in a table.
local socket_lib
do
	local ie = core.request_insecure_environment and core.request_insecure_environment()
	if not ie then
		core.log("error", "[voyager] the mod is not trusted, so it cannot open a network connection. "
			.. "Add `secure.trusted_mods = voyager` to minetest.conf (keep other trusted mods in the "
			.. "comma-separated list). NPCs will use scripted replies (fallback mode).")
	else
		local ok, lib = pcall(ie.require, "socket.core")
		if ok and type(lib) == "table" then
			socket_lib = lib
		else
			core.log("error", "[voyager] cannot load LuaSocket (socket.core): " .. tostring(lib)
				.. ". Install lua-socket for the Lua version the server uses (LuaJIT: Lua 5.1). "
				.. "NPCs will use scripted replies (fallback mode).")
		end
	end
end

voyager = {modpath = modpath}

voyager.bit = dofile(modpath .. "/bitops.lua").new(rawget(_G, "bit"))
voyager.sha1lib = dofile(modpath .. "/sha1.lua")
voyager.sha1 = voyager.sha1lib.new(voyager.bit)
voyager.json = dofile(modpath .. "/json.lua")
voyager.ws = dofile(modpath .. "/ws.lua")
voyager.client_lib = dofile(modpath .. "/client.lua")
voyager.chat = dofile(modpath .. "/chat.lua")

dofile(modpath .. "/api.lua")
dofile(modpath .. "/settings.lua")
dofile(modpath .. "/npc.lua")
dofile(modpath .. "/actions.lua")
dofile(modpath .. "/talk.lua")
dofile(modpath .. "/commands.lua")
dofile(modpath .. "/net.lua")(socket_lib)
