-- Reads the voyager.* settings (see settingtypes.txt) with defaults and clamps.

local function get(name)
	local v = core.settings:get("voyager." .. name)
	if v == "" then return nil end
	return v
end

local function num(name, default, min, max)
	local v = tonumber(get(name)) or default
	if v < min then v = min elseif v > max then v = max end
	return v
end

local function list(name, default)
	local out, set = {}, {}
	local raw = core.settings:get("voyager." .. name)
	if raw == nil then raw = default end -- set but empty means none
	for item in raw:gmatch("[^,%s]+") do
		if not set[item] then
			out[#out + 1] = item
			set[item] = true
		end
	end
	return out, set
end

function voyager.read_settings()
	local s = {}
	s.url = get("url") or "ws://127.0.0.1:8000/ws/luanti/"
	s.token = get("token") or ""
	s.connect_timeout = num("connect_timeout", 5, 1, 60)
	s.reply_timeout = num("reply_timeout", 30, 3, 600)
	s.fallback_after = num("fallback_after", 3, 0, 3600)
	s.reconnect_max = num("reconnect_max", 60, 2, 3600)
	s.queue_size = math.floor(num("queue_size", 16, 1, 256))
	s.max_tokens = math.floor(num("max_tokens", 120, 8, 256))
	s.give_max = math.floor(num("give_max", 8, 1, 99))
	-- Unset: the running game's default, chosen once the mods are loaded (net.lua); empty: none.
	s.give_allowlist_set = core.settings:get("voyager.give_allowlist") ~= nil
	s.give_allowlist, s.give_allowed = list("give_allowlist", "")
	s.transport = get("transport") or "auto"
	s.server_name = get("server_name") or core.settings:get("server_name") or ""
	return s
end

voyager.settings = voyager.read_settings()
