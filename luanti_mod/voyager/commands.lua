-- Chat commands, the talk form, `@Name text` chat, and player lifecycle.

local S = voyager.S

core.register_privilege("voyager_npc", {
	description = S("Can spawn and remove voyager NPCs"),
	give_to_singleplayer = true,
	give_to_admin = true,
})

local function npc_usage()
	return S("Usage: /npc spawn <persona> [name] | /npc remove | /npc list")
end

-- A free spot two blocks in front of the player.
local function spawn_pos(player)
	local pos = player:get_pos()
	local dir = player:get_look_dir()
	local h = math.sqrt(dir.x * dir.x + dir.z * dir.z)
	if h > 0 then dir = {x = dir.x / h * 2, z = dir.z / h * 2} else dir = {x = 2, z = 0} end
	local base = voyager.round_pos({x = pos.x + dir.x, y = pos.y, z = pos.z + dir.z})
	for _, off in ipairs({0, 1, -1, 2, -2}) do
		local p = {x = base.x, y = base.y + off, z = base.z}
		if voyager.can_stand(p) then return {x = p.x, y = p.y - 0.5, z = p.z} end
	end
	return {x = pos.x, y = pos.y, z = pos.z}
end

local function npc_spawn(name, params)
	local persona, npc_name = params:match("^(%S+)%s*(%S*)$")
	if not persona then return false, npc_usage() end
	local player = core.get_player_by_name(name)
	if not player then return false, S("You must be in the game to spawn an NPC.") end
	local known = voyager.status().personas or {}
	if #known > 0 then
		local found = false
		for _, p in ipairs(known) do if p == persona then found = true end end
		if not found then
			return false, S("Unknown persona '@1'. Known: @2", persona, table.concat(known, ", "))
		end
	end
	local ent, err = voyager.spawn_npc(spawn_pos(player), persona, npc_name ~= "" and npc_name or nil)
	if not ent then return false, S("Cannot spawn: @1", err) end
	voyager.log("action", name .. " spawned NPC " .. ent._data.name .. " (" .. persona .. ", "
		.. ent._data.id .. ")")
	if #known == 0 then
		return true, S("Spawned @1 [@2]. Talk with right-click or @@@3 <text>. (The platform is not connected: "
			.. "the persona is not checked.)", ent._data.name, persona, ent._data.name)
	end
	return true, S("Spawned @1 [@2]. Talk with right-click or @@@3 <text>.", ent._data.name, persona, ent._data.name)
end

local function npc_remove(name)
	local player = core.get_player_by_name(name)
	if not player then return false, S("You must be in the game.") end
	local pos = player:get_pos()
	local best, best_d
	for _, ent in ipairs(voyager.list_npcs()) do
		local d = voyager.distance(pos, ent.object:get_pos())
		if d <= 10 and (not best or d < best_d) then best, best_d = ent, d end
	end
	if not best then return false, S("No NPC within 10 blocks.") end
	local label = best._data.name
	voyager.log("action", name .. " removed NPC " .. label .. " (" .. best._data.id .. ")")
	voyager.remove_npc(best)
	return true, S("Removed @1.", label)
end

local function npc_list()
	local lines = {}
	for _, ent in ipairs(voyager.list_npcs()) do
		local p = voyager.round_pos(ent.object:get_pos())
		lines[#lines + 1] = string.format("%s [%s] at %d,%d,%d", ent._data.name, ent._data.persona,
			p.x, p.y, p.z)
	end
	if #lines == 0 then return true, S("No NPCs loaded.") end
	return true, S("Loaded NPCs:") .. "\n" .. table.concat(lines, "\n")
end

core.register_chatcommand("npc", {
	params = S("spawn <persona> [name] | remove | list"),
	description = S("Manage voyager NPCs"),
	func = function(name, param)
		local sub, rest = param:match("^%s*(%S*)%s*(.-)%s*$")
		if sub == "list" then return npc_list() end
		if sub ~= "spawn" and sub ~= "remove" then return false, npc_usage() end
		if not core.check_player_privs(name, {voyager_npc = true}) then
			return false, S("You need the voyager_npc privilege.")
		end
		if sub == "spawn" then return npc_spawn(name, rest) end
		return npc_remove(name)
	end,
})

core.register_chatcommand("rate", {
	params = S("up|down [reason]"),
	description = S("Rate the last NPC reply you got"),
	func = function(name, param)
		local dir, reason = param:match("^%s*(%S+)%s*(.-)%s*$")
		local score = ({up = 1, down = -1, ["+"] = 1, ["-"] = -1})[dir or ""]
		if not score then return false, S("Usage: /rate up|down [reason]") end
		local ok, err = voyager.rate(name, score, reason)
		if not ok then return false, S("Cannot rate: @1.", err) end
		return true, S("Sending your rating...")
	end,
})

core.register_chatcommand("voyager", {
	params = S("status | link <code> | teach <what the NPC should have said>"),
	description = S("Voyager platform connection; teach the last NPC that answered you a better reply"),
	func = function(name, param)
		local sub, rest = param:match("^%s*(%S*)%s*(.-)%s*$")
		if sub == "link" then
			if not rest:match("^[%w%-]+$") then return false, S("Usage: /voyager link <code from the portal>") end
			local ok, err = voyager.link(name, rest)
			if not ok then return false, S("Cannot link: @1.", err) end
			return true, S("Linking...")
		elseif sub == "teach" then
			if rest == "" then return false, S("Usage: /voyager teach <what the NPC should have said>") end
			local ok, err = voyager.teach(name, rest)
			if not ok then return false, S("Cannot teach: @1.", err) end
			return true, S("Sending your reply...")
		elseif sub == "status" or sub == "" then
			local st = voyager.status()
			local lines = {st.fallback and S("Voyager @1: @2 (fallback: NPCs use scripted lines)", voyager.version,
				st.state) or S("Voyager @1: @2", voyager.version, st.state)}
			if st.ready then
				lines[#lines + 1] = S("Personas: @1", table.concat(st.personas, ", "))
			elseif st.next_attempt_in then
				lines[#lines + 1] = S("Next connection attempt in @1 s", string.format("%.0f", st.next_attempt_in))
			end
			if st.last_close and not st.ready then
				local lc = st.last_close
				lines[#lines + 1] = S("Last disconnect: @1", tostring(lc.error or lc.reason or "")
					.. (lc.code and (" (" .. lc.code .. ")") or ""))
			end
			if st.queued then
				lines[#lines + 1] = S("Waiting: @1 queued, @2 in flight", st.queued, st.pending)
			end
			return true, table.concat(lines, "\n")
		end
		return false, S("Usage: /voyager status | /voyager link <code> | /voyager teach <text>")
	end,
})

-- "@Name text" talks to the nearest NPC with that name.
core.register_on_chat_message(function(name, message)
	local target, text = message:match("^@([%w_%-]+)[,:]?%s+(.+)$")
	if not target then return false end
	local player = core.get_player_by_name(name)
	local ent, dist = voyager.get_npc(target, player and player:get_pos())
	if not ent then return false end -- not an NPC: ordinary chat
	if player and dist and dist > voyager.TALK_RANGE then
		voyager.notice(name, S("@1 is too far away to hear you.", ent._data.name))
		return true
	end
	core.chat_send_player(name, core.colorize("#cccccc", S("You to @1: @2", ent._data.name, text)))
	voyager.talk(name, ent, text)
	return true
end)

core.register_on_player_receive_fields(function(player, formname, fields)
	if formname ~= voyager.TALK_FORM then return false end
	local name = player:get_player_name()
	local id = voyager.talk_target[name]
	voyager.talk_target[name] = nil
	local text = fields.text
	if not id or not text or text:match("^%s*$") or fields.quit and not (fields.say or fields.key_enter) then
		return true
	end
	local ent = voyager.get_npc(id)
	if not ent then
		voyager.notice(name, S("They are gone."))
		return true
	end
	if voyager.distance(player:get_pos(), ent.object:get_pos()) > voyager.TALK_RANGE then
		voyager.notice(name, S("@1 is too far away to hear you.", ent._data.name))
		return true
	end
	core.chat_send_player(name, core.colorize("#cccccc", S("You to @1: @2", ent._data.name, text)))
	voyager.talk(name, ent, text)
	return true
end)

core.register_on_leaveplayer(function(player)
	voyager.cancel_player(player:get_player_name())
end)
