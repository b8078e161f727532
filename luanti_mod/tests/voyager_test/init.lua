-- Headless driver for the voyager mod (smoke test and end-to-end test).
-- Waits for the gateway, spawns an NPC on the ground, asks it a question
-- through voyager.talk (what the chat handler calls), records the events,
-- rates the reply, writes <world>/voyager_test_result.json and shuts down.
--
-- Scenario "outage" (voyager_test.scenario) goes on after the first reply:
-- it waits for the gateway to go away (phase wait_outage: whoever drives the
-- test stops the platform), asks at once and expects the scripted fallback
-- reply (phase wait_fallback), waits for the gateway to come back (phase
-- wait_restore: the driver restarts it), asks again and expects a real reply.
-- The current phase is also written to <world>/voyager_test_progress so the
-- driver knows when to act.

local settings = core.settings
local out_path = settings:get("voyager_test.out")
if not out_path or out_path == "" then
	out_path = core.get_worldpath() .. "/voyager_test_result.json"
end
local persona = settings:get("voyager_test.persona") or "guide"
local question = settings:get("voyager_test.text") or "Hello! Who are you?"
local player = settings:get("voyager_test.player") or "smoke_player"
local do_rate = settings:get_bool("voyager_test.rate", true)
local timeout = tonumber(settings:get("voyager_test.timeout")) or 45
local scenario = settings:get("voyager_test.scenario") or "ask"
local question_down = settings:get("voyager_test.text_outage") or "Are you still there?"
local question_back = settings:get("voyager_test.text_restored") or "Welcome back! Who are you?"
local progress_path = core.get_worldpath() .. "/voyager_test_progress"

local started = core.get_us_time() / 1e6
local function elapsed()
	return math.floor((core.get_us_time() / 1e6 - started) * 1000) / 1000
end

local result = {
	ok = false, phase = "wait_ready", connected = false, ready = false, personas = {},
	disconnects = 0, deltas = {}, chat = {}, reply = nil, actions = {}, blocked = {},
	errors = {}, rated = false, events = {}, ask_id = nil, npc = nil, scenario = scenario,
	deltas_by_ask = {},
}
local phase = "wait_ready"
local finished = false

local function set_phase(p)
	phase = p
	result.phase = p
	local f = io.open(progress_path, "w")
	if f then
		f:write(p .. "\n")
		f:close()
	end
end

local function finish(why)
	if finished then return end
	finished = true
	result.finish_reason = why
	local last = phase
	set_phase("finished")
	result.phase = last
	result.elapsed = elapsed()
	result.status = voyager.status()
	local ent = result.npc and voyager.get_npc(result.npc.id)
	if ent then
		local p = ent.object:get_pos()
		result.npc_pos_end = {x = p.x, y = p.y, z = p.z}
	end
	local f = io.open(out_path, "w")
	if f then
		f:write(core.write_json(result, true))
		f:close()
	else
		core.log("error", "[voyager_test] cannot write " .. out_path)
	end
	core.log("action", "[voyager_test] finished (" .. why .. "), result in " .. out_path)
	core.request_shutdown("voyager_test done", false, 0)
end

if scenario == "outage" then
	result.outage = {fallback_after = tonumber(settings:get("voyager.fallback_after")) or 3}
end

local function ask_npc(text)
	if finished then return end
	local asked = {text = text, t = elapsed()}
	-- By id: the entity table is replaced if its block unloads and loads again during the run.
	local id, why = voyager.talk(player, result.npc.id, text)
	asked.id = id
	result.asks = result.asks or {}
	result.asks[#result.asks + 1] = asked
	if phase == "wait_reply" then result.ask_id = id end
	if not id then
		result.errors[#result.errors + 1] = {code = "talk", message = why}
		finish("talk refused")
	end
end

-- Rate the reply (rate -> rated finishes the test) or finish right away.
local function rate_or_finish(ev)
	if do_rate and ev.exchange then
		set_phase("wait_rate")
		local ok, err = voyager.rate(player, 1, "voyager_test: good answer")
		if not ok then
			result.errors[#result.errors + 1] = {code = "rate", message = err}
			finish("rate not sent")
		end
	else
		result.ok = true
		finish(ev.fallback and "fallback reply" or "reply")
	end
end

voyager.register_on_event(function(ev)
	if #result.events < 200 then
		result.events[#result.events + 1] = {t = elapsed(), type = ev.type, code = ev.code,
			name = ev.name, ok = ev.ok}
	end
	if ev.type == "connected" then
		result.connected = true
	elseif ev.type == "ready" then
		result.ready = true
		result.personas = ev.personas
		if phase == "wait_restore" then
			result.outage.ready_again_at = elapsed()
			set_phase("wait_reply_restored")
			core.after(0, function() ask_npc(question_back) end)
		end
	elseif ev.type == "disconnected" then
		result.disconnects = result.disconnects + 1
		if phase == "wait_outage" then
			-- Ask at once, while the mod still hopes to reconnect: the ask waits in the queue
			-- and must turn into a scripted reply when the fallback starts.
			result.outage.down_at = elapsed()
			set_phase("wait_fallback")
			core.after(0, function() ask_npc(question_down) end)
		end
	elseif ev.type == "fallback" then
		if result.outage then
			local key = ev.active and "fallback_at" or "restored_at"
			if result.outage[key] == nil then result.outage[key] = elapsed() end
		end
	elseif ev.type == "delta" then
		result.deltas[#result.deltas + 1] = ev.text
		if ev.id then
			result.deltas_by_ask[ev.id] = (result.deltas_by_ask[ev.id] or "") .. ev.text
		end
	elseif ev.type == "chat" then
		result.chat[#result.chat + 1] = ev.text
	elseif ev.type == "reply" then
		local rec = {text = ev.text, exchange = ev.exchange, fallback = ev.fallback or false,
			actions = ev.actions, blocked = ev.blocked, t = elapsed()}
		if phase == "wait_reply" then
			result.reply = rec
			-- Give the actions a moment to play out before recording the end.
			set_phase("after_reply")
			core.after(1.5, function()
				if scenario == "outage" and not ev.fallback then
					set_phase("wait_outage")
				else
					rate_or_finish(ev)
				end
			end)
		elseif phase == "wait_fallback" then
			result.outage.fallback_reply = rec
			if ev.fallback then
				set_phase("wait_restore")
			else
				finish("a platform reply while the platform was down")
			end
		elseif phase == "wait_reply_restored" then
			result.outage.restored_reply = rec
			if ev.fallback then
				finish("a fallback reply after the platform came back")
			else
				result.reply = rec
				rate_or_finish(ev)
			end
		end
	elseif ev.type == "action" then
		result.actions[#result.actions + 1] = {name = ev.name, args = ev.args, ok = ev.ok, detail = ev.detail}
	elseif ev.type == "blocked" then
		result.blocked[#result.blocked + 1] = {name = ev.name, rule = ev.rule}
	elseif ev.type == "error" then
		result.errors[#result.errors + 1] = {code = ev.code, message = ev.message, request = ev.request}
		-- While down, the queued ask fails `unavailable` and the mod answers with a scripted line.
		local expected = phase == "wait_fallback" and ev.code == "unavailable"
		if not expected and (phase == "wait_reply" or phase == "wait_reply_restored" or phase == "wait_fallback") then
			finish("error " .. tostring(ev.code) .. " in phase " .. phase)
		end
		if phase == "wait_rate" then finish("rate error " .. tostring(ev.code)) end
	elseif ev.type == "rated" then
		result.rated = true
		if phase == "wait_rate" then
			result.ok = true
			finish("rated")
		end
	end
end)

local function ground_at(x, z)
	for y = 40, -20, -1 do
		local p = {x = x, y = y, z = z}
		if voyager.can_stand(p) then return p end
	end
end

local function spawn_and_ask()
	-- The middle of a map block, with its neighbours kept loaded: with no player online,
	-- an NPC that wanders (the fallback does) over a block edge would unload.
	local feet = ground_at(8, 8)
	if not feet then
		result.errors[#result.errors + 1] = {code = "no_ground"}
		finish("no ground found")
		return
	end
	for dx = -16, 16, 16 do
		for dz = -16, 16, 16 do
			core.forceload_block({x = feet.x + dx, y = feet.y, z = feet.z + dz}, true)
		end
	end
	local spawned, err = voyager.spawn_npc({x = feet.x, y = feet.y - 0.5, z = feet.z}, persona, "Smokey")
	if not spawned then
		result.errors[#result.errors + 1] = {code = "spawn", message = err}
		finish("spawn failed")
		return
	end
	result.npc = {id = spawned._data.id, name = spawned._data.name, persona = persona,
		pos = {x = feet.x, y = feet.y - 0.5, z = feet.z}}
	set_phase("wait_reply")
	ask_npc(question)
end

local emerging = false
core.register_globalstep(function()
	if finished then return end
	if elapsed() > timeout then
		finish("timeout in phase " .. phase)
		return
	end
	local st = voyager.status()
	if phase == "wait_ready" and (st.ready or st.fallback) and not emerging then
		result.fallback_at_start = st.fallback
		emerging = true
		set_phase("emerge")
		core.emerge_area({x = -16, y = -32, z = -16}, {x = 16, y = 47, z = 16}, function(_, _, remaining)
			if remaining == 0 and not finished then spawn_and_ask() end
		end)
	end
end)
