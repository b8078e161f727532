-- The gateway client: protocol version 1 over one WebSocket, with
-- reconnection (exponential backoff + jitter), a bounded outgoing queue while
-- disconnected, mod-side reply timeouts, keepalive and the fallback switch.
--
-- It knows nothing about the game: the glue hands in `open` (makes a ws
-- connection), `json`, `now`, `random`, `log`, settings, and gets results
-- back through per-request handlers and one `on_event` sink. The socket
-- library never appears in a table reachable from here: it stays inside the
-- `open` closure.

local M = {}

M.PROTOCOL = 1
M.AUTH_CLOSE_CODES = {[4401] = true, [4403] = true}
M.AUTH_HTTP_STATUS = {[401] = true, [403] = true}

local function noop() end

--- opts:
--   open()            -> conn | nil, err   (conn: poll/send_text/close/state)
--   json              {encode = fn, decode = fn}
--   now()             seconds (monotonic enough)
--   random()          [0, 1)
--   log(level, msg)
--   on_event(ev)      {type = "connected" | "ready" | "disconnected" | "fallback" | "auth_refused", ...}
--   settings          {reply_timeout, fallback_after, reconnect_max, queue_size,
--                      keepalive, backoff_base}
--   server_name, mod_version
function M.new(opts)
	local json, now, random = opts.json, opts.now, opts.random or math.random
	local log = opts.log or noop
	local on_event = opts.on_event or noop
	local s = opts.settings or {}
	local reply_timeout = s.reply_timeout or 30
	local fallback_after = s.fallback_after or 3
	local reconnect_max = s.reconnect_max or 60
	local queue_size = s.queue_size or 16
	local keepalive = s.keepalive or 20
	local backoff_base = s.backoff_base or 1
	local welcome_timeout = s.welcome_timeout or 10

	local c = {}
	local conn
	local state = opts.open and "backoff" or "disabled"
	local attempts = 0
	local next_attempt = now()
	local down_since = now()
	local fallback = false
	local personas = {}
	local queue = {}       -- frames waiting for the connection: {kind, frame, handlers, id}
	local pending = {}     -- asks in flight, by id
	local requests = {}    -- rate/link in flight, FIFO
	local last_rx, ping_sent = now(), nil
	local opened_at = now()
	local last_close = nil -- {code, reason, error}
	local last_failure = nil -- the reason last logged at warning level
	local ask_seq = 0
	local session = string.format("%06x", math.floor(random() * 0xffffff))
	local stats = {sent = 0, received = 0, connects = 0, dropped = 0}

	local function call(h, name, ...)
		local fn = h and h[name]
		if not fn then return end
		local ok, err = pcall(fn, ...)
		if not ok then log("error", "handler " .. name .. " failed: " .. tostring(err)) end
	end

	local function emit(ev)
		local ok, err = pcall(on_event, ev)
		if not ok then log("error", "event handler failed: " .. tostring(err)) end
	end

	local function send(frame)
		if not conn or conn.state ~= "open" then return false end
		local ok, text = pcall(json.encode, frame)
		if not ok then
			log("error", "cannot encode frame " .. tostring(frame.type) .. ": " .. tostring(text))
			return false
		end
		local sent, err = conn:send_text(text)
		if not sent then
			log("warning", "send failed: " .. tostring(err))
			return false
		end
		stats.sent = stats.sent + 1
		return true
	end

	local function fail_item(item, code, message)
		if item.kind == "ask" then pending[item.id] = nil end
		call(item.handlers, "error", code, message)
	end

	local function dispatch(item)
		if item.kind == "ask" then
			local p = pending[item.id]
			if not p then return end -- cancelled while queued
			p.deadline = now() + reply_timeout
			p.hard_deadline = now() + 3 * reply_timeout
			p.sent = true
			send(item.frame)
		else
			item.deadline = now() + reply_timeout
			requests[#requests + 1] = item
			send(item.frame)
		end
	end

	local function enqueue(item)
		if state == "ready" then
			dispatch(item)
			return true
		end
		if fallback or state == "disabled" then
			fail_item(item, "unavailable", "the platform is not reachable")
			return false
		end
		if #queue >= queue_size then
			-- Drop the oldest ask (or the oldest anything) to make room.
			local victim = 1
			for i, q in ipairs(queue) do
				if q.kind == "ask" then victim = i; break end
			end
			local old = table.remove(queue, victim)
			stats.dropped = stats.dropped + 1
			log("warning", "outgoing queue full (" .. queue_size .. "): dropped a " .. old.kind)
			fail_item(old, "unavailable", "too many waiting messages")
		end
		queue[#queue + 1] = item
		return true
	end

	local function fail_all(code, message)
		local q = queue
		queue = {}
		for _, item in ipairs(q) do fail_item(item, code, message) end
		local p = pending
		pending = {}
		for _, a in pairs(p) do call(a.handlers, "error", code, message) end
		local r = requests
		requests = {}
		for _, item in ipairs(r) do call(item.handlers, "error", code, message) end
	end

	local function schedule_reconnect(auth_refused)
		attempts = attempts + 1
		local delay
		if auth_refused then
			delay = reconnect_max
		else
			delay = math.min(reconnect_max, backoff_base * 2 ^ (attempts - 1))
		end
		delay = delay * (0.5 + 0.5 * random()) -- jitter
		next_attempt = now() + delay
		state = "backoff"
		return delay
	end

	local function on_disconnect(ev)
		local was_ready = state == "ready"
		conn = nil
		ping_sent = nil
		last_close = {code = ev.code, reason = ev.reason, error = ev.error, status = ev.status}
		local auth = M.AUTH_CLOSE_CODES[ev.code] or M.AUTH_HTTP_STATUS[ev.status]
		if was_ready then down_since = now() end
		-- Asks in flight are lost with the socket; the gateway drops them too.
		local p = pending
		local keep = {}
		for id, a in pairs(p) do
			if a.sent then
				call(a.handlers, "error", "unavailable", "connection lost")
			else
				keep[id] = a
			end
		end
		pending = keep
		local r = requests
		requests = {}
		for _, item in ipairs(r) do call(item.handlers, "error", "unavailable", "connection lost") end
		local delay = schedule_reconnect(auth)
		if auth then
			log("error", string.format("token refused by the gateway (%s): check voyager.token; "
				.. "retrying in %d s", ev.status and ("HTTP " .. ev.status) or ("close code " .. tostring(ev.code)),
				delay))
			emit({type = "auth_refused", code = ev.code, status = ev.status})
		else
			local why = string.format("%s%s", tostring(ev.code), ev.error and (": " .. ev.error)
				or (ev.reason and ev.reason ~= "" and (": " .. ev.reason) or ""))
			-- The reason at warning level once per change (a new reason, or after being connected);
			-- the same failure again, attempt after attempt, at info.
			log((was_ready or why ~= last_failure) and "warning" or "info",
				string.format("%s (%s); reconnecting in %.1f s", was_ready and "disconnected" or "cannot connect",
					why, delay))
			last_failure = why
		end
		emit({type = "disconnected", code = ev.code, reason = ev.reason, error = ev.error,
			status = ev.status, retry_in = delay})
	end

	local function take_request(kind, match)
		for i, item in ipairs(requests) do
			if item.kind == kind and (match == nil or match(item)) then
				return table.remove(requests, i)
			end
		end
	end

	local handlers_by_type = {}

	handlers_by_type.welcome = function(msg)
		if msg.protocol ~= M.PROTOCOL then
			log("warning", "gateway speaks protocol " .. tostring(msg.protocol) .. ", the mod speaks "
				.. M.PROTOCOL)
		end
		personas = {}
		if type(msg.personas) == "table" then
			for _, p in ipairs(msg.personas) do
				if type(p) == "string" then personas[#personas + 1] = p end
			end
		end
		state = "ready"
		attempts = 0
		last_failure = nil
		local was_fallback = fallback
		fallback = false
		log("action", "connected to the gateway; personas: " .. table.concat(personas, ", "))
		emit({type = "ready", personas = personas})
		if was_fallback then emit({type = "fallback", active = false}) end
		local q = queue
		queue = {}
		for _, item in ipairs(q) do dispatch(item) end
	end

	handlers_by_type.delta = function(msg)
		local p = pending[msg.id]
		if not p then return end
		p.deadline = math.min(now() + reply_timeout, p.hard_deadline)
		if type(msg.text) == "string" then call(p.handlers, "delta", msg.text) end
	end

	handlers_by_type.reply = function(msg)
		local p = pending[msg.id]
		if not p then return end
		pending[msg.id] = nil
		if type(msg.text) ~= "string" then msg.text = "" end
		if type(msg.actions) ~= "table" then msg.actions = {} end
		if type(msg.blocked) ~= "table" then msg.blocked = {} end
		call(p.handlers, "reply", msg)
	end

	handlers_by_type.error = function(msg)
		local code, message = tostring(msg.code or "internal"), tostring(msg.message or "")
		if msg.id ~= nil and pending[msg.id] then
			local p = pending[msg.id]
			pending[msg.id] = nil
			call(p.handlers, "error", code, message)
			return
		end
		-- rate/link carry no id: match by field if the gateway echoes one,
		-- else the oldest request in flight (frames are answered in order).
		local item = (msg.exchange and take_request("rate", function(r) return r.frame.exchange == msg.exchange end))
			or (msg.player and take_request("link", function(r) return r.frame.player == msg.player end))
			or (msg.id == nil and table.remove(requests, 1))
		if item then
			call(item.handlers, "error", code, message)
		else
			log("warning", "gateway error " .. code .. ": " .. message
				.. (msg.id and (" (id " .. tostring(msg.id) .. ")") or ""))
		end
	end

	handlers_by_type.rated = function(msg)
		local item = take_request("rate", function(r) return r.frame.exchange == msg.exchange end)
		if item then call(item.handlers, "done", msg) end
	end

	handlers_by_type.taught = function(msg)
		local item = take_request("teach", function(r) return r.frame.exchange == msg.exchange end)
		if item then call(item.handlers, "done", msg) end
	end

	handlers_by_type.linked = function(msg)
		local item = take_request("link", function(r) return r.frame.player == msg.player end)
		if item then call(item.handlers, "done", msg) end
	end

	handlers_by_type.pong = function()
		ping_sent = nil
	end

	handlers_by_type.ping = function()
		send({type = "pong"})
	end

	-- A WebSocket message is the frame's text; the HTTP binding hands in the frame decoded.
	local function on_message(text, frame)
		local ok, msg = true, frame
		if msg == nil then ok, msg = pcall(json.decode, text) end
		if not ok or type(msg) ~= "table" or type(msg.type) ~= "string" then
			log("warning", "ignoring a frame that is not a JSON object with a type: " .. tostring(text):sub(1, 120))
			return
		end
		stats.received = stats.received + 1
		local h = handlers_by_type[msg.type]
		if h then
			h(msg)
		else
			log("info", "ignoring unknown frame type " .. msg.type)
		end
	end

	local function check_timeouts()
		local t = now()
		for id, p in pairs(pending) do
			if t >= math.min(p.deadline, p.hard_deadline) then
				pending[id] = nil
				if p.sent then send({type = "cancel", id = id}) end
				for i, q in ipairs(queue) do
					if q.id == id then table.remove(queue, i); break end
				end
				call(p.handlers, "error", "timeout", "no reply in time")
			end
		end
		for i = #requests, 1, -1 do
			local r = requests[i]
			if t >= r.deadline then
				table.remove(requests, i)
				call(r.handlers, "error", "timeout", "no answer in time")
			end
		end
	end

	local function update_fallback()
		-- No transport at all (untrusted, no HTTP API; a bad URL): nothing to wait for.
		local should = state == "disabled" or (state ~= "ready" and (now() - down_since) >= fallback_after)
		if should and not fallback then
			fallback = true
			log("warning", "the platform has been unreachable for " .. fallback_after
				.. " s: NPCs use scripted behaviour until it is back")
			fail_all("unavailable", "the platform is not reachable")
			emit({type = "fallback", active = true})
		end
	end

	--- Runs the state machine; call from a globalstep (inside xpcall).
	function c.step()
		local t = now()
		if state == "backoff" and t >= next_attempt then
			local newconn, err = opts.open()
			if newconn then
				conn = newconn
				state = "connecting"
				stats.connects = stats.connects + 1
			else
				local why = tostring(err)
				log(why ~= last_failure and "warning" or "info", "cannot connect: " .. why)
				last_failure = why
				schedule_reconnect(false)
			end
		end
		if conn then
			local events = conn:poll()
			for _, ev in ipairs(events) do
				if ev.type == "open" then
					state = "open"
					last_rx, ping_sent, opened_at = now(), nil, now()
					emit({type = "connected"})
					send({type = "hello", protocol = M.PROTOCOL, server = opts.server_name,
						mod_version = opts.mod_version})
				elseif ev.type == "message" then
					last_rx = now()
					on_message(ev.data, ev.frame)
				elseif ev.type == "pong" then
					last_rx = now()
				elseif ev.type == "close" then
					on_disconnect(ev)
					break
				end
			end
			if conn and state == "open" and now() - opened_at > welcome_timeout then
				log("warning", "no welcome from the gateway in " .. welcome_timeout .. " s: reconnecting")
				conn:close(1002, "no welcome", true)
				on_disconnect({code = 1002, error = "no welcome"})
			end
			if conn and state == "ready" then
				t = now()
				if ping_sent and t - ping_sent > keepalive then
					log("warning", "no answer to ping in " .. keepalive .. " s: reconnecting")
					local dead = conn
					dead:close(1001, "keepalive timeout", true)
					on_disconnect({code = 1006, error = "keepalive timeout"})
				elseif not ping_sent and t - last_rx > keepalive then
					ping_sent = t
					send({type = "ping"})
				end
			end
		end
		check_timeouts()
		update_fallback()
	end

	local function new_id()
		ask_seq = ask_seq + 1
		return string.format("%s-%x-%d", session, math.floor(now() * 1000) % 0x100000000, ask_seq)
	end

	--- Sends an ask. req: {npc, persona, player, text, context?, max_tokens?}.
	-- handlers: {delta(text), reply(msg), error(code, message)}.
	-- Returns the ask id (the handlers may already have run on failure).
	function c.ask(req, handlers)
		local id = new_id()
		local frame = {type = "ask", id = id, npc = req.npc, persona = req.persona,
			player = req.player, text = req.text, context = req.context, max_tokens = req.max_tokens}
		pending[id] = {handlers = handlers, deadline = now() + reply_timeout,
			hard_deadline = now() + 3 * reply_timeout, player = req.player, npc = req.npc}
		enqueue({kind = "ask", id = id, frame = frame, handlers = handlers})
		return id
	end

	--- req: {exchange, player, score (1 | -1), reason?}; handlers: {done, error}.
	function c.rate(req, handlers)
		enqueue({kind = "rate", frame = {type = "rate", exchange = req.exchange, player = req.player,
			score = req.score, reason = req.reason}, handlers = handlers})
	end

	--- req: {exchange, player, text}: the reply the player wanted instead; handlers: {done, error}.
	function c.teach(req, handlers)
		enqueue({kind = "teach", frame = {type = "teach", exchange = req.exchange, player = req.player,
			text = req.text}, handlers = handlers})
	end

	--- req: {player, code}; handlers: {done, error}.
	function c.link(req, handlers)
		enqueue({kind = "link", frame = {type = "link", player = req.player, code = req.code},
			handlers = handlers})
	end

	--- Forgets an ask; tells the gateway if it was already sent.
	function c.cancel(id)
		local p = pending[id]
		if not p then return false end
		pending[id] = nil
		for i, q in ipairs(queue) do
			if q.id == id then table.remove(queue, i); break end
		end
		if p.sent then send({type = "cancel", id = id}) end
		return true
	end

	--- Cancels every ask matching field == value (player or npc).
	function c.cancel_where(field, value)
		local ids = {}
		for id, p in pairs(pending) do
			if p[field] == value then ids[#ids + 1] = id end
		end
		for _, id in ipairs(ids) do c.cancel(id) end
		return #ids
	end

	function c.is_ready() return state == "ready" end
	function c.in_fallback() return fallback end
	function c.personas() return personas end

	function c.status()
		local n = 0
		for _ in pairs(pending) do n = n + 1 end
		return {
			state = state, ready = state == "ready", fallback = fallback,
			personas = personas, queued = #queue, pending = n, requests = #requests,
			attempts = attempts, next_attempt_in = state == "backoff" and math.max(0, next_attempt - now()) or nil,
			last_close = last_close, stats = stats,
		}
	end

	--- Closes the connection for good (server shutdown).
	function c.shutdown()
		if conn then
			conn:close(1001, "server shutting down", true)
			conn = nil
		end
		state = "disabled"
	end

	return c
end

return M
