-- Wires the gateway client into the server: builds the WebSocket opener
-- around the socket library handed in by init.lua (which never reaches a
-- table), steps it from a globalstep inside xpcall, closes on shutdown.
-- Returns a function of the socket library (nil when the mod is not trusted).

return function(socket_lib)
	local s = voyager.settings
	local traceback = debug.traceback

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

	local open
	if socket_lib then
		local wslib = voyager.ws.new({ops = voyager.bit, sha1 = voyager.sha1, base64 = voyager.sha1lib.base64})
		open = function()
			return wslib.connect({
				url = s.url, token = s.token, socket = socket_lib, now = now,
				random_bytes = random_bytes, connect_timeout = s.connect_timeout,
				headers = {["User-Agent"] = "luanti-voyager-mod/" .. voyager.version},
			})
		end
		local u, err = voyager.ws.parse_url(s.url)
		if not u then
			voyager.log("error", "voyager.url is not usable: " .. err .. "; running in fallback mode")
			open = nil
		elseif s.token == "" then
			voyager.log("warning", "voyager.token is empty: the gateway will refuse the connection. "
				.. "Get a token for this server in the portal.")
		end
	end

	local client = voyager.client_lib.new({
		open = open, json = json, now = now, random = random,
		log = voyager.log,
		on_event = function(ev)
			voyager.emit(ev)
			if ev.type == "fallback" then
				core.chat_send_all(core.colorize("#aaaaaa", ev.active
					and "[voyager] The NPCs' minds are far away for now; they will answer simply."
					or "[voyager] The NPCs are themselves again."))
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
		voyager.log("action", "gateway at " .. s.url .. " (protocol " .. voyager.client_lib.PROTOCOL .. ")")
	end
end
