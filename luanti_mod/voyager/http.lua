-- Protocol v1's HTTP binding (docs/protocol.md) over the engine's HTTP API
-- (core.request_http_api(): granted by secure.http_mods, HTTPS through the
-- engine's cURL). A session stands for the WebSocket: frames are posted, one
-- JSON object per line, and one long poll is kept open for what comes back.
--
-- connect() returns a connection with the WebSocket's interface (poll,
-- send_text, close, state), so the gateway client drives either the same way.
-- Nothing here blocks: every request is fetch_async, looked at from poll().

local M = {}

--- The binding's base URL for a configured gateway URL: http(s):// is taken
-- as it is; ws:// and wss:// become http:// and https://, and the WebSocket's
-- path /ws/luanti/ becomes /http/luanti/. Returns the base (ending in "/") or nil, err.
function M.base_url(url)
	if type(url) ~= "string" then return nil, "no URL" end
	local scheme, rest = url:match("^(%a+)://(.+)$")
	if not scheme then return nil, "not a URL: " .. url end
	scheme = scheme:lower()
	local map = {ws = "http", wss = "https", http = "http", https = "https"}
	if not map[scheme] then
		return nil, "unsupported scheme " .. scheme .. ":// (expected http://, https://, ws:// or wss://)"
	end
	local host, path = rest:match("^([^/?#]+)(.*)$")
	if not host then return nil, "no host in URL " .. url end
	path = path:gsub("[?#].*$", "")
	if path == "" or path == "/" or path:match("/ws/luanti/?$") then
		path = path:gsub("ws/luanti/?$", "")
		if path:sub(-1) ~= "/" then path = path .. "/" end
		path = path .. "http/luanti/"
	end
	if path:sub(-1) ~= "/" then path = path .. "/" end
	return map[scheme] .. "://" .. host .. path
end

--- deps: {http = the engine's HTTP API table (fetch_async, fetch_async_get),
--         decode = JSON text -> table (raises on bad JSON), now = seconds}
function M.new(deps)
	local lib = {base_url = M.base_url}
	local http, decode = deps.http, deps.decode

	--- opts: {url (gateway URL), token, connect_timeout, user_agent}
	function lib.connect(opts)
		local base, err = M.base_url(opts.url)
		if not base then return nil, err end
		local conn = {state = "connecting", base = base, session = nil, seq = 0,
			poll_seconds = 25, requests = 0}
		local events = {}
		local outgoing = {}     -- frame texts not yet posted
		local inflight = {}     -- handle -> {kind, ...}
		local posting, polling = false, false
		local headers = {"Authorization: Bearer " .. (opts.token or "")}

		local function fetch(kind, req)
			req.extra_headers = {headers[1], conn.session and ("X-Voyager-Session: " .. conn.session) or nil}
			req.user_agent = opts.user_agent
			local handle = http.fetch_async(req)
			inflight[handle] = {kind = kind}
			conn.requests = conn.requests + 1
			return handle
		end

		local function closed(ev)
			if conn.state == "closed" then return end
			conn.state = "closed"
			ev.type = "close"
			events[#events + 1] = ev
		end

		-- A refused request: the status, and the close code the gateway named.
		local function refused(res, what)
			local ok, body = pcall(decode, res.data or "")
			local code = ok and type(body) == "table" and tonumber(body.close) or nil
			local message = ok and type(body) == "table" and body.message or nil
			closed({status = res.code, code = code, reason = message,
				error = string.format("%s answered HTTP %s%s", what, tostring(res.code),
					message and (": " .. tostring(message)) or "")})
		end

		local function failed(res, what)
			closed({code = 1006, error = what .. " failed: "
				.. (res.timeout and "timed out" or "no answer (connection refused or the host is unreachable)")})
		end

		local function start_poll()
			if polling or conn.state ~= "open" then return end
			polling = true
			fetch("poll", {url = base .. "poll/?after=" .. conn.seq, method = "GET",
				timeout = conn.poll_seconds + 10})
		end

		local function flush()
			if posting or conn.state ~= "open" or #outgoing == 0 then return end
			posting = true
			local body = table.concat(outgoing, "\n")
			outgoing = {}
			fetch("frames", {url = base .. "frames/", method = "POST", data = body,
				timeout = opts.connect_timeout or 10})
		end

		local handlers = {}
		function handlers.session(res)
			if res.code ~= 201 then return refused(res, "opening a session") end
			local ok, body = pcall(decode, res.data or "")
			if not ok or type(body) ~= "table" or type(body.session) ~= "string" then
				return closed({code = 1002, error = "the gateway's session answer is not one"})
			end
			conn.session, conn.state = body.session, "open"
			conn.poll_seconds = tonumber(body.poll_seconds) or conn.poll_seconds
			events[#events + 1] = {type = "open"}
		end
		function handlers.frames(res)
			posting = false
			if res.code ~= 202 then return refused(res, "posting frames") end
		end
		function handlers.poll(res)
			polling = false
			if res.code ~= 200 then return refused(res, "the poll") end
			local ok, body = pcall(decode, res.data or "")
			if not ok or type(body) ~= "table" or type(body.frames) ~= "table" then
				return closed({code = 1002, error = "the gateway's poll answer is not one"})
			end
			conn.seq = tonumber(body.seq) or conn.seq
			for _, frame in ipairs(body.frames) do
				events[#events + 1] = {type = "message", frame = frame}
			end
		end

		--- Events since the last call: open, message ({frame}), close ({status?, code?, error}).
		function conn.poll()
			for handle, req in pairs(inflight) do
				local res = http.fetch_async_get(handle)
				if res.completed then
					inflight[handle] = nil
					if conn.state ~= "closed" then
						if res.succeeded then
							handlers[req.kind](res)
						else
							failed(res, ({session = "opening a session", poll = "the poll",
								frames = "posting frames"})[req.kind] or req.kind)
						end
					end
				end
			end
			-- Frames sent in this step go out together, in one request.
			flush()
			start_poll()
			local out = events
			events = {}
			return out
		end

		function conn:send_text(text)
			if self.state ~= "open" then return false, "not open" end
			outgoing[#outgoing + 1] = text
			return true
		end

		--- Ends the session (told to the gateway unless it is gone already).
		function conn:close(code, reason)
			if self.state == "open" and self.session then
				fetch("end", {url = base .. "session/", method = "DELETE", timeout = 5})
			end
			self.state = "closed"
			inflight = {}
		end

		fetch("session", {url = base .. "session/", method = "POST", data = "",
			timeout = opts.connect_timeout or 10})
		return conn
	end

	return lib
end

return M
