-- voyager: NPCs that talk and act through the Luanti Voyager platform.
-- This file only gets the socket library and loads the split files.

local modpath = core.get_modpath(core.get_current_modname())

-- What the mod may use to reach the platform is asked for once, here, at load
-- time (the engine allows no later request), and handed to net.lua as
-- arguments, never stored in a table:
-- - the engine's HTTP API (secure.http_mods = voyager): the HTTP transport,
--   HTTPS included, with no other privilege;
-- - with secure.trusted_mods = voyager, LuaSocket's C core from the insecure
--   environment ("socket" itself fails under mod security): the WebSocket.
local http_api = core.request_http_api and core.request_http_api()
local socket_lib, socket_problem
do
	local ie = core.request_insecure_environment and core.request_insecure_environment()
	if not ie then
		socket_problem = "the mod is not trusted (secure.trusted_mods)"
	else
		local ok, lib = pcall(ie.require, "socket.core")
		if ok and type(lib) == "table" then
			socket_lib = lib
		else
			socket_problem = "cannot load LuaSocket (socket.core): " .. tostring(lib)
		end
	end
end

voyager = {modpath = modpath}

voyager.bit = dofile(modpath .. "/bitops.lua").new(rawget(_G, "bit"))
voyager.json = dofile(modpath .. "/json.lua")
voyager.ws = dofile(modpath .. "/ws.lua")
voyager.http = dofile(modpath .. "/http.lua")
voyager.client_lib = dofile(modpath .. "/client.lua")
voyager.chat = dofile(modpath .. "/chat.lua")

dofile(modpath .. "/api.lua")
dofile(modpath .. "/settings.lua")
dofile(modpath .. "/npc.lua")
dofile(modpath .. "/actions.lua")
dofile(modpath .. "/talk.lua")
dofile(modpath .. "/commands.lua")
dofile(modpath .. "/net.lua")({socket = socket_lib, socket_problem = socket_problem, http = http_api})
