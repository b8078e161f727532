-- Actions a reply asks an NPC to do. The gateway has already run them
-- through the platform's policy; here the world's own checks apply (free
-- space, loaded area, online players, allowlists, clamps).
-- An action is {name = str, args = {str...}}; a handler returns ok, detail.

local registry = {}
voyager.action_handlers = registry

voyager.MOVE_MAX = 3       -- blocks per axis
voyager.FACE_RANGE = 32    -- face/follow only players this close
voyager.SAY_RANGE = 16     -- who hears `say`
voyager.SAY_MAX = 200      -- characters

--- Adds or replaces an action. fn(ent, args, ctx) -> ok, detail
-- ctx: {player = name of the player the NPC answered, quiet = bool}
function voyager.register_action(name, fn)
	assert(type(name) == "string" and type(fn) == "function")
	registry[name] = fn
end

-- args may come as a list or as one string; always a list of strings here.
local function normalize_args(args)
	local out = {}
	if type(args) == "string" then
		for w in args:gmatch("%S+") do out[#out + 1] = w end
	elseif type(args) == "table" then
		for _, a in ipairs(args) do out[#out + 1] = tostring(a) end
	elseif args ~= nil then
		out[1] = tostring(args)
	end
	return out
end
voyager.normalize_args = normalize_args

local function clamp(v, lo, hi)
	if v < lo then return lo elseif v > hi then return hi end
	return v
end

local function int_arg(s, default)
	local n = tonumber(s)
	if not n or n ~= n then return default end
	return n >= 0 and math.floor(n + 0.5) or -math.floor(-n + 0.5)
end

local function walkable(node)
	if node.name == "ignore" then return nil end -- not loaded
	local def = core.registered_nodes[node.name]
	if not def then return true end -- unknown nodes block
	return def.walkable ~= false
end

-- Body fits at p (feet node) and p+1, and there is ground under p.
local function can_stand(p)
	local below = walkable(core.get_node({x = p.x, y = p.y - 1, z = p.z}))
	local feet = walkable(core.get_node(p))
	local head = walkable(core.get_node({x = p.x, y = p.y + 1, z = p.z}))
	if below == nil or feet == nil or head == nil then return nil end
	return below and not feet and not head
end
voyager.can_stand = can_stand

local function online_player_near(ent, name)
	local player = name and core.get_player_by_name(name)
	if not player then return nil, "player " .. tostring(name) .. " is not online" end
	local ppos, pos = player:get_pos(), ent.object:get_pos()
	if voyager.distance(ppos, pos) > voyager.FACE_RANGE then
		return nil, "player " .. name .. " is too far away"
	end
	return player
end

voyager.register_action("move", function(ent, args)
	local pos = ent.object:get_pos()
	local m = voyager.MOVE_MAX
	local dx = clamp(int_arg(args[1], 0), -m, m)
	local dy = clamp(int_arg(args[2], 0), -m, m)
	local dz = clamp(int_arg(args[3], 0), -m, m)
	if dx == 0 and dy == 0 and dz == 0 then return true, "no move" end
	local base = voyager.round_pos(pos)
	local target = {x = base.x + dx, y = base.y + dy, z = base.z + dz}
	-- Let the NPC step up or down one block to find footing.
	for _, off in ipairs({0, 1, -1}) do
		local p = {x = target.x, y = target.y + off, z = target.z}
		local ok = can_stand(p)
		if ok then
			voyager.face_pos(ent, p)
			ent.object:move_to({x = p.x, y = p.y - 0.5, z = p.z}, true)
			return true, string.format("moved to %d,%d,%d", p.x, p.y, p.z)
		end
	end
	return false, "no free place to stand there"
end)

voyager.register_action("follow", function(ent, args, ctx)
	local name = args[1] or ctx.player
	local player, err = online_player_near(ent, name)
	if not player then return false, err end
	ent._follow = player:get_player_name()
	return true, "following " .. ent._follow
end)

voyager.register_action("stop_following", function(ent)
	local was = ent._follow
	ent._follow = nil
	local vel = ent.object:get_velocity() or {x = 0, y = 0, z = 0}
	ent.object:set_velocity({x = 0, y = vel.y, z = 0})
	return true, was and ("stopped following " .. was) or "was not following"
end)

voyager.register_action("face", function(ent, args, ctx)
	if #args >= 2 and tonumber(args[1]) and tonumber(args[2]) then
		local dx, dz = tonumber(args[1]), tonumber(args[2])
		if dx == 0 and dz == 0 then return false, "no direction" end
		ent.object:set_yaw(core.dir_to_yaw({x = dx, y = 0, z = dz}))
		return true, "facing " .. dx .. "," .. dz
	end
	local player, err = online_player_near(ent, args[1] or ctx.player)
	if not player then return false, err end
	voyager.face_pos(ent, player:get_pos())
	return true, "facing " .. player:get_player_name()
end)

voyager.register_action("jump", function(ent)
	local vel = ent.object:get_velocity() or {x = 0, y = 0, z = 0}
	if math.abs(vel.y) > 0.2 then return false, "not on the ground" end
	ent.object:set_velocity({x = vel.x, y = 6.5, z = vel.z})
	return true, "jumped"
end)

voyager.register_action("say", function(ent, args, ctx)
	local text = voyager.clean_text(table.concat(args, " "), voyager.SAY_MAX)
	text = text:gsub("^%s+", ""):gsub("%s+$", "")
	if text == "" then return false, "nothing to say" end
	local pos = ent.object:get_pos()
	local heard = {}
	for _, player in ipairs(core.get_connected_players()) do
		local pname = player:get_player_name()
		if pname == ctx.player or voyager.distance(player:get_pos(), pos) <= voyager.SAY_RANGE then
			heard[pname] = true
			voyager.chat_to(pname, ent._data.name, text)
		end
	end
	local n = 0
	for _ in pairs(heard) do n = n + 1 end
	return true, "said to " .. n .. " player(s)"
end)

voyager.register_action("give", function(ent, args, ctx)
	local item, count = args[1], int_arg(args[2], 1)
	local s = voyager.settings
	if not item or not s.give_allowed[item] then
		return false, "item " .. tostring(item) .. " is not in voyager.give_allowlist"
	end
	local def = core.registered_items[item]
	if not def then return false, "item " .. item .. " is not registered in this game" end
	count = clamp(count, 1, math.min(s.give_max, def.stack_max or 99))
	local player, err = online_player_near(ent, ctx.player)
	if not player then return false, err end
	local inv = player:get_inventory()
	local stack = item .. " " .. count
	if not inv or not inv:room_for_item("main", stack) then
		return false, "no room in " .. ctx.player .. "'s inventory"
	end
	inv:add_item("main", stack)
	voyager.notice(ctx.player, ent._data.name .. " gives you " .. count .. " × "
		.. voyager.clean_text((def.description or item):match("^[^\n]*"), 60) .. ".")
	return true, "gave " .. stack .. " to " .. ctx.player
end)

--- Runs one action for an NPC. Returns ok, detail; never raises.
function voyager.run_action(ent, action, ctx)
	ctx = ctx or {}
	if type(action) ~= "table" or type(action.name) ~= "string" then
		voyager.log("warning", "ignoring a malformed action")
		return false, "malformed"
	end
	local fn = registry[action.name]
	local args = normalize_args(action.args)
	local res, detail
	if not fn then
		res, detail = false, "unknown action"
	elseif not (ent and ent.object and ent.object:get_pos()) then
		res, detail = false, "the NPC is gone"
	else
		local ok
		ok, res, detail = pcall(fn, ent, args, ctx)
		if not ok then res, detail = false, "failed: " .. tostring(res) end
	end
	res = res and true or false
	local who = ent and ent._data and ent._data.name or "?"
	if not ctx.quiet or not res then
		voyager.log(detail == "unknown action" and "warning" or "action", string.format("%s: action %s %s -> %s (%s)", who,
			action.name, table.concat(args, " "), res and "done" or "skipped", tostring(detail)))
	end
	if not ctx.quiet then
		voyager.emit({type = "action", npc = ent and ent._data and ent._data.id, player = ctx.player,
			name = action.name, args = args, ok = res, detail = detail})
	end
	return res, detail
end
