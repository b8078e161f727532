-- Shared helpers and the public hook: other mods (and the smoke/e2e test
-- mod) observe everything through voyager.register_on_event.

voyager.version = "0.2.0"

-- Every player-facing string goes through the translator (locale/voyager.*.tr).
voyager.S = core.get_translator(core.get_current_modname() or "voyager")

local listeners = {}

--- fn(event): event.type is one of connected, ready, disconnected,
-- auth_refused, fallback, ask, delta, chat, reply, error, action, blocked,
-- rated, taught, linked, npc_spawned, npc_removed.
function voyager.register_on_event(fn)
	listeners[#listeners + 1] = fn
end

function voyager.log(level, msg)
	core.log(level, "[voyager] " .. msg)
end

function voyager.emit(ev)
	for _, fn in ipairs(listeners) do
		local ok, err = pcall(fn, ev)
		if not ok then voyager.log("error", "event listener failed: " .. tostring(err)) end
	end
end

--- Strips colour escapes and control characters from text that came from
-- the network before it reaches chat.
function voyager.clean_text(text, max_len)
	text = tostring(text or "")
	text = text:gsub("\27%([^)]*%)", ""):gsub("\27.", ""):gsub("[%c]", " ")
	if max_len and #text > max_len then
		text = text:sub(1, max_len):gsub("[\128-\191]*$", "") -- no cut UTF-8 sequence
		text = text:gsub("[\192-\255]$", "") .. "…"
	end
	return text
end

--- A line from an NPC to one player.
function voyager.chat_to(player, npc_name, text)
	core.chat_send_player(player, core.colorize("#8fd3ff", "<" .. npc_name .. ">") .. " " .. text)
	voyager.emit({type = "chat", player = player, npc = npc_name, text = text})
end

--- A quiet system line to one player.
function voyager.notice(player, text)
	core.chat_send_player(player, core.colorize("#aaaaaa", "[voyager] " .. text))
end
