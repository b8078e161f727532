-- Start-up decisions, kept free of the engine so the specs can check them:
-- which transport reaches the platform, which items NPCs may give on the
-- game that runs, and which of the allowed items the game does not have.

local M = {}

--- Chooses the transport. t: {transport = "auto" | "websocket" | "http",
-- url, socket = bool (LuaSocket loaded), http = bool (the HTTP API granted),
-- socket_problem = why there is no socket}.
-- Returns "websocket" | "http", or nil and why neither can be used.
function M.transport(t)
	local scheme = (type(t.url) == "string" and t.url:match("^(%a+)://") or ""):lower()
	local wants_http = t.transport == "http" or scheme == "https" or scheme == "http" or scheme == "wss"
	if t.transport == "websocket" then
		if scheme == "https" or scheme == "http" or scheme == "wss" then
			return nil, "voyager.transport = websocket needs a ws:// URL (the mod's WebSocket has no TLS)"
		end
		if t.socket then return "websocket" end
		return nil, "voyager.transport = websocket, but " .. tostring(t.socket_problem or "LuaSocket is missing")
	end
	if not wants_http and t.socket then return "websocket" end
	if t.http then return "http" end
	if wants_http then
		return nil, "the HTTP transport needs the engine's HTTP API: add `secure.http_mods = voyager` to minetest.conf"
	end
	return nil, "no way to reach the platform: " .. tostring(t.socket_problem or "no LuaSocket")
		.. ", and no HTTP API. Add `secure.http_mods = voyager` to minetest.conf (least privilege), "
		.. "or `secure.trusted_mods = voyager` with LuaSocket installed"
end

-- What NPCs may give by default, per game: things every player has a use for.
M.GAME_ITEMS = {
	minetest_game = {"default:apple", "default:torch", "farming:bread"},
	mineclonia = {"mcl_core:apple", "mcl_torches:torch", "mcl_farming:bread"},
	devtest = {"basenodes:apple", "basetools:pick_wood"},
}
M.GAME_ITEMS.mineclone2 = M.GAME_ITEMS.mineclonia -- VoxeLibre's game id
M.GAME_ITEMS.voxelibre = M.GAME_ITEMS.mineclonia

--- Which game runs: its id when the engine says it (5.7+), else guessed from
-- the mods loaded (has_mod(name) -> bool). nil when neither tells.
function M.game(game_id, has_mod)
	if game_id and M.GAME_ITEMS[game_id] then return game_id end
	if has_mod("default") then return "minetest_game" end
	if has_mod("mcl_core") then return "mineclonia" end
	if has_mod("basenodes") then return "devtest" end
	return game_id
end

--- The items NPCs may give by default on `game`, or an empty list.
function M.default_give(game)
	local items = M.GAME_ITEMS[game or ""]
	local out = {}
	for i, item in ipairs(items or {}) do out[i] = item end
	return out
end

--- The items of `list` that are not in `registered` (a name -> definition table).
function M.missing(list, registered)
	local out = {}
	for _, item in ipairs(list) do
		if not registered[item] then out[#out + 1] = item end
	end
	return out
end

return M
