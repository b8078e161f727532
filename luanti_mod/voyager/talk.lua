-- Conversations: a player's words to an NPC become an `ask`; deltas stream
-- into the player's chat; the reply's actions run; errors become friendly
-- lines; while the platform is unreachable NPCs answer with canned lines.

local client -- set by voyager.set_client (net.lua)
local streams = {}      -- ask id -> {stream, player, npc}
local busy = {}         -- player -> ask id
local last_reply = {}   -- player -> {exchange, npc}

voyager.TEXT_MAX = 500
voyager.NEARBY_MAX = 16
voyager.NEARBY_RADIUS = 6

local S = voyager.S

-- Each a function of the player's name: the line, translated.
voyager.CANNED_LINES = {
	function(p) return S("Hmm? Sorry, @1, my thoughts are elsewhere right now.", p) end,
	function(p) return S("Ah, @1. Let me think about that later.", p) end,
	function(p) return S("I can't quite put it into words today, @1.", p) end,
	function(p) return S("*nods at @1* Fine weather, isn't it?", p) end,
	function(p) return S("Come back a little later, @1, and we'll talk properly.", p) end,
}

local FRIENDLY = {
	npc_frozen = function(n) return S("@1 has been put to rest by a moderator and can't talk right now.", n) end,
	unknown_persona = function(n)
		return S("@1 doesn't quite know who they are yet (unknown persona). Tell the server operator.", n)
	end,
	overloaded = function(n) return S("@1 is busy with many conversations. Try again in a moment.", n) end,
	unavailable = function(n) return S("@1 seems lost in thought. Try again in a little while.", n) end,
	timeout = function(n) return S("@1 took too long to answer. Try again.", n) end,
	rate_limited = function(n) return S("You're talking to @1 too fast. Slow down a little.", n) end,
	invalid = function(n) return S("@1 didn't understand that (the message was refused).", n) end,
	not_found = function(n) return S("@1 can't find what you are talking about.", n) end,
	internal = function(n) return S("Something went wrong while @1 was thinking.", n) end,
}

function voyager.set_client(c)
	client = c
end

function voyager.in_fallback()
	return not client or client.in_fallback()
end

function voyager.status()
	if not client then return {state = "disabled", ready = false, fallback = true, personas = {}} end
	return client.status()
end

local function friendly(code, npc_name)
	local line = FRIENDLY[code]
	if line then return line(npc_name) end
	return S("@1 can't answer right now.", npc_name)
end
voyager.friendly_error = friendly

--- What the NPC sees around itself, bounded.
function voyager.npc_context(ent)
	local pos = ent.object:get_pos()
	local p = voyager.round_pos(pos)
	local nearby, seen = {}, {}
	local function add(name)
		if #nearby < voyager.NEARBY_MAX and not seen[name] then
			seen[name] = true
			nearby[#nearby + 1] = name
		end
	end
	for _, obj in ipairs(core.get_objects_inside_radius(pos, voyager.NEARBY_RADIUS)) do
		if obj:is_player() then
			add("player:" .. obj:get_player_name())
		else
			local le = obj:get_luaentity()
			if le and le ~= ent then
				add(le._data and ("npc:" .. le._data.name) or le.name)
			end
		end
	end
	local r = 2
	for dy = -1, r do
		for dx = -r, r do
			for dz = -r, r do
				local node = core.get_node({x = p.x + dx, y = p.y + dy, z = p.z + dz})
				if node.name ~= "air" and node.name ~= "ignore" then add(node.name) end
			end
		end
	end
	local ctx = {pos = {p.x, p.y, p.z}, time_of_day = math.floor(core.get_timeofday() * 1000) / 1000,
		ts = os.time()}
	if #nearby > 0 then ctx.nearby = nearby end
	return ctx
end

local function fallback_reply(player, ent, text)
	local line = voyager.CANNED_LINES[math.random(#voyager.CANNED_LINES)](player)
	local npc_name = ent._data.name
	core.after(0.3 + math.random() * 0.7, function()
		voyager.chat_to(player, npc_name, line)
		voyager.emit({type = "reply", player = player, npc = ent._data.id, text = line,
			fallback = true, actions = {}, question = text})
	end)
	return "fallback"
end

--- A player says `text` to an NPC. npc: luaentity, NPC id or display name.
-- Works without the player being online (tests, other mods). Returns the
-- ask id ("fallback" for a canned line) or nil, reason.
function voyager.talk(player, npc, text, opts)
	opts = opts or {}
	local ent = voyager.get_npc(npc)
	if not ent then return nil, "no such NPC" end
	text = voyager.clean_text(text, voyager.TEXT_MAX):gsub("^%s+", ""):gsub("%s+$", "")
	if text == "" then return nil, "nothing said" end
	local d = ent._data
	if busy[player] then
		voyager.notice(player, S("Wait for an answer first."))
		return nil, "busy"
	end
	voyager.emit({type = "ask", player = player, npc = d.id, text = text})
	if voyager.in_fallback() then
		return fallback_reply(player, ent, text)
	end

	local id
	local stream = voyager.chat.new_stream({
		now = function() return core.get_us_time() / 1e6 end,
		send = function(chunk) voyager.chat_to(player, d.name, chunk) end,
	})
	local function done()
		if id == nil then return end -- failed before client.ask returned
		streams[id] = nil
		if busy[player] == id then busy[player] = nil end
	end
	local handlers = {}
	function handlers.delta(chunk)
		voyager.emit({type = "delta", id = id, player = player, npc = d.id, text = chunk})
		stream:push(voyager.clean_text(chunk))
	end
	function handlers.reply(msg)
		done()
		stream:finish(voyager.clean_text(msg.text))
		if type(msg.exchange) == "string" then
			last_reply[player] = {exchange = msg.exchange, npc = d.name}
		end
		voyager.emit({type = "reply", id = id, player = player, npc = d.id, text = msg.text,
			exchange = msg.exchange, actions = msg.actions, blocked = msg.blocked})
		for _, b in ipairs(msg.blocked) do
			if type(b) == "table" then
				voyager.log("action", string.format("%s: action %s %s blocked by policy (%s)", d.name,
					tostring(b.name), table.concat(voyager.normalize_args(b.args), " "), tostring(b.rule)))
				voyager.emit({type = "blocked", npc = d.id, player = player, name = b.name,
					args = voyager.normalize_args(b.args), rule = b.rule})
			end
		end
		local live = voyager.get_npc(d.id)
		for _, action in ipairs(msg.actions) do
			voyager.run_action(live, action, {player = player})
		end
	end
	function handlers.error(code, message)
		done()
		stream:abort()
		voyager.emit({type = "error", id = id, player = player, npc = d.id, code = code, message = message})
		if code == "cancelled" then return end
		if code == "unavailable" and voyager.in_fallback() then
			local live = voyager.get_npc(d.id)
			if live then fallback_reply(player, live, text) end
			return
		end
		if code == "unknown_persona" or code == "invalid" or code == "internal" then
			voyager.log("warning", string.format("ask for %s (%s) failed: %s %s", d.name, d.persona,
				code, tostring(message)))
		end
		voyager.notice(player, friendly(code, d.name))
	end
	id = client.ask({npc = d.id, persona = d.persona, player = player, text = text,
		context = voyager.npc_context(ent), max_tokens = opts.max_tokens or voyager.settings.max_tokens},
		handlers)
	-- The handlers may already have run (queue full / not reachable).
	if streams[id] == nil and not stream.done then
		streams[id] = {stream = stream, player = player, npc = d.id}
		busy[player] = id
	end
	return id
end

--- Flushes streamed text that has waited long enough (globalstep).
function voyager.tick_streams()
	for _, s in pairs(streams) do s.stream:tick() end
end

function voyager.cancel_player(player)
	busy[player] = nil
	last_reply[player] = nil
	voyager.talk_target[player] = nil
	for id, s in pairs(streams) do
		if s.player == player then streams[id] = nil end
	end
	if client then client.cancel_where("player", player) end
end

function voyager.cancel_npc(npc_id)
	for id, s in pairs(streams) do
		if s.npc == npc_id then
			streams[id] = nil
			if busy[s.player] == id then busy[s.player] = nil end
		end
	end
	if client then client.cancel_where("npc", npc_id) end
end

function voyager.last_reply(player)
	return last_reply[player]
end

--- Rates the last reply `player` got: score 1 or -1.
function voyager.rate(player, score, reason)
	local last = last_reply[player]
	if not last then return nil, S("no reply to rate yet") end
	if voyager.in_fallback() then return nil, S("the platform is not reachable right now") end
	reason = reason and voyager.clean_text(reason, 300) or nil
	if reason == "" then reason = nil end
	client.rate({exchange = last.exchange, player = player, score = score, reason = reason}, {
		done = function()
			voyager.notice(player, S("Thanks! Your rating of @1's reply was recorded.", last.npc))
			voyager.emit({type = "rated", player = player, exchange = last.exchange, score = score})
		end,
		error = function(code, message)
			voyager.notice(player, code == "not_found" and S("That reply can no longer be rated.")
				or S("Rating failed (@1).", code))
			voyager.emit({type = "error", player = player, code = code, message = message, request = "rate"})
		end,
	})
	return last.exchange
end

--- Teaches the NPC of the last reply `player` got what it should have said instead.
function voyager.teach(player, text)
	local last = last_reply[player]
	if not last then return nil, S("no reply to correct yet") end
	if voyager.in_fallback() then return nil, S("the platform is not reachable right now") end
	text = voyager.clean_text(text or "", 1000):match("^%s*(.-)%s*$")
	if text == "" then return nil, S("write what @1 should have said", last.npc) end
	client.teach({exchange = last.exchange, player = player, text = text}, {
		done = function()
			voyager.notice(player, S("Thanks! @1 will learn from your reply.", last.npc))
			voyager.emit({type = "taught", player = player, exchange = last.exchange})
		end,
		error = function(code, message)
			voyager.notice(player, code == "invalid" and S("Not taught: @1", message)
				or code == "not_found" and S("That reply can no longer be corrected.")
				or S("Teaching failed (@1).", code))
			voyager.emit({type = "error", player = player, code = code, message = message, request = "teach"})
		end,
	})
	return last.exchange
end

--- Links `player` to a portal account with a code shown in the portal.
function voyager.link(player, code)
	if voyager.in_fallback() then return nil, S("the platform is not reachable right now") end
	client.link({player = player, code = code}, {
		done = function()
			voyager.notice(player, S("Your game name is now linked to your portal account."))
			voyager.emit({type = "linked", player = player})
		end,
		error = function(ecode, message)
			voyager.notice(player, ecode == "not_found" and S("That link code is unknown or has expired.")
				or S("Linking failed (@1).", ecode))
			voyager.emit({type = "error", player = player, code = ecode, message = message, request = "link"})
		end,
	})
	return true
end
