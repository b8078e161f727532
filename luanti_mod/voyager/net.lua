-- Wires the gateway client into the server: chooses the transport (the
-- WebSocket around the socket library, or the engine's HTTP API), steps it
-- from a globalstep inside xpcall, closes on shutdown; and runs the start-up
-- checks once the game's mods are loaded. Returns a function of what init.lua
-- was granted: {socket = LuaSocket's core or nil, socket_problem, http = the
-- HTTP API or nil}. Neither ever reaches a table.

return function(granted)
	local s = voyager.settings
	local traceback = debug.traceback
	local startup = dofile(voyager.modpath .. "/startup.lua")
	local socket_lib = granted.socket
	local now = function() return core.get_us_time() / 1e6 end

	local pcg = PcgRandom(os.time() + math.floor(core.get_us_time() % 1e9))
	local function random()
		return pcg:next(0, 0x3fffffff) / 0x40000000
	end
	local secure = SecureRandom and SecureRandom()
	local function random_bytes(n)
		if secure then
			local ok, bytes = pcall(secure.next_bytes, secure, n)
			if ok and type(bytes) == "string" and #bytes == n then return bytes end
		end
		local t = {}
		for i = 1, n do t[i] = string.char(pcg:next(0, 255)) end
		return table.concat(t)
	end

	local json = {
		encode = voyager.json.encode,
		decode = function(text)
			local v = core.parse_json(text)
			if v == nil then error("bad JSON") end
			return v
		end,
	}

	local user_agent = "luanti-voyager-mod/" .. voyager.version
	local transport, why_not = startup.transport({transport = s.transport, url = s.url,
		socket = socket_lib ~= nil, http = granted.http ~= nil, socket_problem = granted.socket_problem})
	local open
	if transport == "websocket" then
		-- The handshake's SHA-1 and base64 are the engine's (the specs bring a pure-Lua pair, spec/sha1.lua).
		-- Minetest 5.6 leaves out base64's "=" padding, which RFC 6455's key and accept carry: add it back.
		local function base64(data)
			local text = core.encode_base64(data)
			return text .. string.rep("=", (4 - #text % 4) % 4)
		end
		local wslib = voyager.ws.new({ops = voyager.bit, base64 = base64,
			sha1 = function(data) return core.sha1(data, true) end})
		local u, err = voyager.ws.parse_url(s.url)
		if u then
			open = function()
				return wslib.connect({
					url = s.url, token = s.token, socket = socket_lib, now = now,
					random_bytes = random_bytes, connect_timeout = s.connect_timeout,
					headers = {["User-Agent"] = user_agent},
				})
			end
		else
			why_not = "voyager.url is not usable: " .. err
		end
	elseif transport == "http" then
		local httplib = voyager.http.new({http = granted.http, decode = json.decode, now = now})
		local base, err = voyager.http.base_url(s.url)
		if base then
			open = function()
				return httplib.connect({url = s.url, token = s.token, connect_timeout = s.connect_timeout,
					user_agent = user_agent})
			end
		else
			why_not = "voyager.url is not usable: " .. err
		end
	end
	if not open then
		voyager.log("error", tostring(why_not) .. ". NPCs use scripted replies (fallback mode).")
	elseif s.token == "" then
		voyager.log("warning", "voyager.token is empty: the gateway will refuse the connection. "
			.. "Get a token for this server in the portal.")
	end

	local client = voyager.client_lib.new({
		open = open, json = json, now = now, random = random,
		log = voyager.log,
		on_event = function(ev)
			voyager.emit(ev)
			if ev.type == "fallback" then
				core.chat_send_all(core.colorize("#aaaaaa", "[voyager] " .. (ev.active
					and voyager.S("The NPCs' minds are far away for now; they will answer simply.")
					or voyager.S("The NPCs are themselves again."))))
			end
		end,
		settings = {reply_timeout = s.reply_timeout, fallback_after = s.fallback_after,
			reconnect_max = s.reconnect_max, queue_size = s.queue_size},
		server_name = s.server_name ~= "" and s.server_name:sub(1, 100) or nil,
		mod_version = voyager.version,
	})
	voyager.set_client(client)

	local last_error_log = -math.huge
	local function step()
		client.step()
		voyager.tick_streams()
	end
	core.register_globalstep(function()
		local ok, err = xpcall(step, traceback)
		if not ok then
			local t = now()
			if t - last_error_log > 10 then -- do not flood the log
				last_error_log = t
				voyager.log("error", "network step failed (the server keeps running): " .. tostring(err))
			end
		end
	end)

	core.register_on_shutdown(function()
		pcall(client.shutdown)
	end)

	if open then
		voyager.log("action", "gateway at " .. s.url .. " over " .. transport .. " (protocol "
			.. voyager.client_lib.PROTOCOL .. ")")
	end

	-- Start-up checks, once every mod has registered its items: what NPCs may give.
	core.register_on_mods_loaded(function()
		local info = core.get_game_info and core.get_game_info() or {}
		local game = startup.game(info.id, function(name) return core.get_modpath(name) ~= nil end)
		if not s.give_allowlist_set then
			local items = startup.default_give(game)
			if #items == 0 then
				voyager.log("warning", "no default voyager.give_allowlist for the game " .. tostring(game or "?")
					.. ": NPCs give nothing until you set one in minetest.conf")
			end
			s.give_allowlist, s.give_allowed = items, {}
			for _, item in ipairs(items) do s.give_allowed[item] = true end
		end
		local missing = startup.missing(s.give_allowlist, core.registered_items)
		if #missing > 0 then
			voyager.log("warning", "voyager.give_allowlist names items this game does not register: "
				.. table.concat(missing, ", ") .. " (NPCs cannot give them)")
		end
	end)
end
