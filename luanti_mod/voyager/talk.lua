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

voyager.CANNED_LINES = {
	"Hmm? Sorry, %s, my thoughts are elsewhere right now.",
	"Ah, %s. Let me think about that later.",
	"I can't quite put it into words today, %s.",
	"*nods at %s* Fine weather, isn't it?",
	"Come back a little later, %s, and we'll talk properly.",
}

local FRIENDLY = {
	npc_frozen = "%s has been put to rest by a moderator and can't talk right now.",
	unknown_persona = "%s doesn't quite know who they are yet (unknown persona). Tell the server operator.",
	overloaded = "%s is busy with many conversations. Try again in a moment.",
	unavailable = "%s seems lost in thought. Try again in a little while.",
	timeout = "%s took too long to answer. Try again.",
	rate_limited = "You're talking to %s too fast. Slow down a little.",
	invalid = "%s didn't understand that (the message was refused).",
	not_found = "%s can't find what you are talking about.",
	internal = "Something went wrong while %s was thinking.",
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
	return string.format(FRIENDLY[code] or "%s can't answer right now.", npc_name)
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
	local line = voyager.CANNED_LINES[math.random(#voyager.CANNED_LINES)]:format(player)
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
		voyager.notice(player, "Wait for an answer first.")
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
	if not last then return nil, "no reply to rate yet" end
	if voyager.in_fallback() then return nil, "the platform is not reachable right now" end
	reason = reason and voyager.clean_text(reason, 300) or nil
	if reason == "" then reason = nil end
	client.rate({exchange = last.exchange, player = player, score = score, reason = reason}, {
		done = function()
			voyager.notice(player, "Thanks! Your rating of " .. last.npc .. "'s reply was recorded.")
			voyager.emit({type = "rated", player = player, exchange = last.exchange, score = score})
		end,
		error = function(code, message)
			voyager.notice(player, code == "not_found" and "That reply can no longer be rated."
				or ("Rating failed (" .. code .. ")."))
			voyager.emit({type = "error", player = player, code = code, message = message, request = "rate"})
		end,
	})
	return last.exchange
end

--- Teaches the NPC of the last reply `player` got what it should have said instead.
function voyager.teach(player, text)
	local last = last_reply[player]
	if not last then return nil, "no reply to correct yet" end
	if voyager.in_fallback() then return nil, "the platform is not reachable right now" end
	text = voyager.clean_text(text or "", 1000):match("^%s*(.-)%s*$")
	if text == "" then return nil, "write what " .. last.npc .. " should have said" end
	client.teach({exchange = last.exchange, player = player, text = text}, {
		done = function()
			voyager.notice(player, "Thanks! " .. last.npc .. " will learn from your reply.")
			voyager.emit({type = "taught", player = player, exchange = last.exchange})
		end,
		error = function(code, message)
			voyager.notice(player, code == "invalid" and ("Not taught: " .. message)
				or code == "not_found" and "That reply can no longer be corrected."
				or ("Teaching failed (" .. code .. ")."))
			voyager.emit({type = "error", player = player, code = code, message = message, request = "teach"})
		end,
	})
	return last.exchange
end

--- Links `player` to a portal account with a code shown in the portal.
function voyager.link(player, code)
	if voyager.in_fallback() then return nil, "the platform is not reachable right now" end
	client.link({player = player, code = code}, {
		done = function()
			voyager.notice(player, "Your game name is now linked to your portal account.")
			voyager.emit({type = "linked", player = player})
		end,
		error = function(ecode, message)
			voyager.notice(player, ecode == "not_found" and "That link code is unknown or has expired."
				or ("Linking failed (" .. ecode .. ")."))
			voyager.emit({type = "error", player = player, code = ecode, message = message, request = "link"})
		end,
	})
	return true
end
