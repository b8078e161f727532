-- The voyager:npc entity, the registry of loaded NPCs, and their idle
-- behaviour (follow a player; wander while the platform is unreachable).

local npcs = {} -- id -> luaentity, for the NPCs that are loaded

voyager.TALK_RANGE = 32
voyager.NAME_PATTERN = "^[%w_%-]+$"
voyager.NAME_MAX = 24

local TEXTURE = "[combine:16x32^[noalpha^[colorize:#33bb77:255"

local function round(v)
	return {x = math.floor(v.x + 0.5), y = math.floor(v.y + 0.5), z = math.floor(v.z + 0.5)}
end

local function distance(a, b)
	local dx, dy, dz = a.x - b.x, a.y - b.y, a.z - b.z
	return math.sqrt(dx * dx + dy * dy + dz * dz)
end
voyager.distance = distance
voyager.round_pos = round

local function alive(ent)
	return ent and ent.object and ent.object:get_pos() ~= nil
end

local function update_nametag(self)
	local d = self._data
	self.object:set_nametag_attributes({
		text = d.name .. " [" .. d.persona .. "]",
		color = {a = 255, r = 200, g = 255, b = 220},
	})
end

function voyager.valid_npc_name(name)
	return type(name) == "string" and #name >= 1 and #name <= voyager.NAME_MAX
		and name:match(voyager.NAME_PATTERN) ~= nil
end

function voyager.new_npc_id(name)
	return string.format("%s-%06x", name:lower(), math.random(0, 0xffffff))
end

--- NPC by id, or by display name (case-insensitive; nearest to `near` when
-- several share it). Returns the luaentity or nil.
function voyager.get_npc(key, near)
	if type(key) == "table" then return alive(key) and key or nil end
	local ent = npcs[key]
	if alive(ent) then return ent end
	local best, best_d
	local lkey = tostring(key):lower()
	for _, e in pairs(npcs) do
		if alive(e) and e._data.name:lower() == lkey then
			local d = near and distance(near, e.object:get_pos()) or 0
			if not best or d < best_d then best, best_d = e, d end
		end
	end
	return best, best_d
end

--- Loaded NPCs as a list of luaentities (sorted by name).
function voyager.list_npcs()
	local out = {}
	for id, e in pairs(npcs) do
		if alive(e) then out[#out + 1] = e else npcs[id] = nil end
	end
	table.sort(out, function(a, b) return a._data.name < b._data.name end)
	return out
end

--- Spawns an NPC at pos; returns the luaentity or nil, err.
function voyager.spawn_npc(pos, persona, name)
	if type(persona) ~= "string" or not persona:match("^[%w_%-]+$") then
		return nil, "bad persona slug"
	end
	name = name or (persona:sub(1, 1):upper() .. persona:sub(2))
	if not voyager.valid_npc_name(name) then
		return nil, "names are 1-" .. voyager.NAME_MAX .. " letters, digits, _ or -"
	end
	local data = {id = voyager.new_npc_id(name), name = name, persona = persona}
	local obj = core.add_entity(pos, "voyager:npc", core.write_json(data))
	if not obj then return nil, "could not add the entity here" end
	local ent = obj:get_luaentity()
	voyager.emit({type = "npc_spawned", npc = data.id, name = name, persona = persona})
	return ent
end

function voyager.remove_npc(ent)
	local d = ent._data
	npcs[d.id] = nil
	if voyager.cancel_npc then voyager.cancel_npc(d.id) end
	ent.object:remove()
	voyager.emit({type = "npc_removed", npc = d.id, name = d.name})
end

-- Following and wandering -------------------------------------------------

local FOLLOW_SPEED = 3
local FOLLOW_NEAR = 2.5
local FOLLOW_LOST = 48

local function face_pos(self, target)
	local pos = self.object:get_pos()
	local dir = {x = target.x - pos.x, y = 0, z = target.z - pos.z}
	if dir.x ~= 0 or dir.z ~= 0 then self.object:set_yaw(core.dir_to_yaw(dir)) end
end
voyager.face_pos = face_pos

local function follow_step(self, moveresult)
	local player = core.get_player_by_name(self._follow)
	local pos = self.object:get_pos()
	local vel = self.object:get_velocity() or {x = 0, y = 0, z = 0}
	local ppos = player and player:get_pos()
	if not ppos or distance(pos, ppos) > FOLLOW_LOST then
		self._follow = nil
		self.object:set_velocity({x = 0, y = vel.y, z = 0})
		return
	end
	face_pos(self, ppos)
	local dx, dz = ppos.x - pos.x, ppos.z - pos.z
	local d = math.sqrt(dx * dx + dz * dz)
	if d <= FOLLOW_NEAR then
		self.object:set_velocity({x = 0, y = vel.y, z = 0})
		return
	end
	local vy = vel.y
	if moveresult and moveresult.touching_ground and moveresult.collides then
		for _, c in ipairs(moveresult.collisions or {}) do
			if c.axis == "x" or c.axis == "z" then vy = 6; break end
		end
	end
	self.object:set_velocity({x = dx / d * FOLLOW_SPEED, y = vy, z = dz / d * FOLLOW_SPEED})
end

local function wander_step(self)
	local t = core.get_us_time() / 1e6
	if not self._wander_at then self._wander_at = t + math.random(3, 8) end
	if t < self._wander_at then return end
	self._wander_at = t + math.random(6, 14)
	if math.random() < 0.6 then
		voyager.run_action(self, {name = "move", args = {math.random(-2, 2), 0, math.random(-2, 2)}},
			{quiet = true})
	end
end

local TALK_FORM = "voyager:talk"
voyager.TALK_FORM = TALK_FORM
local talk_target = {} -- player -> npc id (the form they have open)
voyager.talk_target = talk_target

function voyager.talk_formspec(ent)
	local esc = core.formspec_escape
	return "formspec_version[4]size[10,3.4]"
		.. "label[0.4,0.5;" .. esc(voyager.S("Talk to @1 (@2)", ent._data.name, ent._data.persona)) .. "]"
		.. "field[0.4,1.1;9.2,0.8;text;;]"
		.. "field_close_on_enter[text;true]"
		.. "button_exit[7.4,2.2;2.2,0.8;say;" .. esc(voyager.S("Say")) .. "]"
end

core.register_entity("voyager:npc", {
	initial_properties = {
		physical = true,
		collide_with_objects = true,
		collisionbox = {-0.3, 0.0, -0.3, 0.3, 1.7, 0.3},
		selectionbox = {-0.3, 0.0, -0.3, 0.3, 1.8, 0.3},
		visual = "upright_sprite",
		visual_size = {x = 1, y = 2},
		textures = {TEXTURE, TEXTURE},
		stepheight = 0.6,
		static_save = true,
	},

	on_activate = function(self, staticdata)
		local data = staticdata ~= "" and core.parse_json(staticdata) or nil
		if type(data) ~= "table" or type(data.id) ~= "string" or type(data.persona) ~= "string"
				or not voyager.valid_npc_name(data.name) then
			voyager.log("warning", "removing an NPC with bad saved data")
			self.object:remove()
			return
		end
		if alive(npcs[data.id]) and npcs[data.id] ~= self then
			voyager.log("warning", "removing a duplicate of NPC " .. data.id)
			self.object:remove()
			return
		end
		self._data = {id = data.id, name = data.name, persona = data.persona}
		npcs[data.id] = self
		self.object:set_armor_groups({immortal = 1})
		self.object:set_acceleration({x = 0, y = -9.81, z = 0})
		update_nametag(self)
	end,

	get_staticdata = function(self)
		return self._data and core.write_json(self._data) or ""
	end,

	on_deactivate = function(self)
		if self._data and npcs[self._data.id] == self then npcs[self._data.id] = nil end
	end,

	on_step = function(self, _, moveresult)
		if not self._data then return end
		if self._follow then
			follow_step(self, moveresult)
		elseif voyager.in_fallback() then
			wander_step(self)
		end
	end,

	on_rightclick = function(self, clicker)
		if not self._data or not clicker or not clicker:is_player() then return end
		local name = clicker:get_player_name()
		talk_target[name] = self._data.id
		core.show_formspec(name, TALK_FORM, voyager.talk_formspec(self))
	end,

	on_punch = function()
		return true -- no damage, no knockback
	end,
})
