-- pin_gpu0.lua: keep one model on GPU 0, and everything else off it.
--
-- GPU 0 of a pool is its first device of kind "gpu", in the order the pool lists its
-- devices (the driver's order). Starting from the built-in's decisions:
--   * MODEL starts only on a GPU 0 (a one-device mask): the built-in's start is moved
--     to the GPU 0 with the most room; if none has room, the least recently used idle
--     worker of another model on a GPU 0 is stopped to make room (it waits meanwhile);
--   * any other model's start that would use a GPU 0 moves to the same pool's other
--     devices with the most room, else another pool's; if none fits, it waits;
--   * no MODEL worker on a GPU 0 is ever stopped: when the built-in would evict one to
--     make room for another model, that model's stops are all dropped and it waits.
-- Memory is counted as the built-in does: a device's free bytes less what starts
-- kept earlier in this cycle reserve.

local MODEL = "hf:org/model-x@main::file=model-x.gguf"

local function gpu0(pool)
  for _, d in ipairs(pool.devices) do
    if d.kind == "gpu" then return d.device_id end
  end
end

function decide(snapshot)
  local reserved = {}   -- pool_id .. "/" .. device_id -> bytes reserved this cycle
  local function free(pool_id, device_id)
    return snapshot.devices[pool_id][device_id].free_bytes
           - (reserved[pool_id .. "/" .. device_id] or 0)
  end
  local function reserve(pool_id, device_ids, bytes)
    for _, id in ipairs(device_ids) do
      local key = pool_id .. "/" .. id
      reserved[key] = (reserved[key] or 0) + bytes
    end
  end
  local function offers(pool, model)
    local heads = snapshot.queued[model]
    local engine = heads and heads[1].engine or "hf"
    if not pool.available then return false end
    for _, e in ipairs(pool.engines) do if e == engine then return true end end
    return false
  end

  -- MODEL: the GPU 0 with the most room (ties: pool order)
  local function place_on_gpu0(bytes)
    local best, room
    for pool_id, pool in pairs(snapshot.pools) do
      local g = gpu0(pool)
      if g and offers(pool, MODEL) and free(pool_id, g) >= bytes
          and (room == nil or free(pool_id, g) > room) then
        best, room = {pool_id, g}, free(pool_id, g)
      end
    end
    return best
  end

  -- another model: k devices other than GPU 0, the pool's most free ones
  local function mask_without_gpu0(pool_id, pool, k, bytes)
    local g, devs = gpu0(pool), {}
    for _, d in ipairs(pool.devices) do
      if d.device_id ~= g and free(pool_id, d.device_id) >= bytes then
        devs[#devs + 1] = d.device_id
      end
    end
    if #devs < k then return nil end
    table.sort(devs, function(a, b)
      local fa, fb = free(pool_id, a), free(pool_id, b)
      if fa ~= fb then return fa > fb end
      return a < b
    end)
    local mask = {}
    for i = 1, k do mask[i] = devs[i] end
    return mask
  end

  local decisions = builtin_decide(snapshot)
  local taken, keeps_x = {}, {}   -- workers dispatched to; models whose stops would
  for _, d in ipairs(decisions) do  -- stop a MODEL worker on a GPU 0
    if d.action == "dispatch" then taken[d.worker_id] = true end
    if d.action == "stop_worker" then
      local w = snapshot.workers[d.worker_id]
      if w.model_ref == MODEL and w.device_ids[1] == gpu0(snapshot.pools[w.pool_id]) then
        keeps_x[d.for_model] = true
      end
    end
  end

  local function evict_for_model(bytes)
    for _, w in ipairs(snapshot.idle_lru) do   -- least recently used first
      local pool = snapshot.pools[w.pool_id]
      local g = pool and gpu0(pool)
      if w.model_ref ~= MODEL and g and #w.device_ids == 1 and w.device_ids[1] == g
          and not taken[w.worker_id] and not snapshot.is_pinned(w)
          and free(w.pool_id, g) + w.memory_bytes >= bytes then
        return {action = "stop_worker", worker_id = w.worker_id,
                reason = "making room for " .. MODEL .. " on GPU 0 of " .. w.pool_id}
      end
    end
  end

  local out, rewait = {}, {}   -- rewait: model -> the reason its wait now gives
  for model in pairs(keeps_x) do rewait[model] = "no device has room outside GPU 0" end
  for _, d in ipairs(decisions) do
    if d.action == "start_worker" then
      local pool = snapshot.pools[d.pool_id]
      local g = gpu0(pool)
      local uses_gpu0 = false
      for _, id in ipairs(d.device_ids) do if id == g then uses_gpu0 = true end end
      if d.model_ref == MODEL and not (uses_gpu0 and #d.device_ids == 1) then
        local at = place_on_gpu0(d.memory_estimate)
        if at then
          d.pool_id, d.device_ids = at[1], {at[2]}
          d.reason = "keeping " .. MODEL .. " on GPU 0 of " .. at[1]
        else
          local stop = evict_for_model(d.memory_estimate)
          out[#out + 1] = stop
          rewait[MODEL] = stop and "evicting to make room" or "GPU 0 has no room"
          d = nil
        end
      elseif d.model_ref ~= MODEL and uses_gpu0 then
        local k, mask = #d.device_ids, nil
        mask = mask_without_gpu0(d.pool_id, pool, k, d.memory_estimate)
        if mask then
          d.device_ids = mask
        else
          for pool_id, p in pairs(snapshot.pools) do
            if mask == nil and pool_id ~= d.pool_id and offers(p, d.model_ref) then
              mask = mask_without_gpu0(pool_id, p, k, d.memory_estimate)
              if mask then d.pool_id, d.device_ids = pool_id, mask end
            end
          end
        end
        if mask then
          d.reason = d.reason .. "; GPU 0 is kept for " .. MODEL
        else
          rewait[d.model_ref] = "no device has room outside GPU 0"
          d = nil
        end
      end
      if d then reserve(d.pool_id, d.device_ids, d.memory_estimate) end
    elseif d.action == "stop_worker" and keeps_x[d.for_model] then
      d = nil   -- it would stop MODEL on GPU 0 (and the other stops alone do not fit)
    elseif d.action == "wait" and rewait[d.model_ref] then
      d.reason = rewait[d.model_ref]
    end
    if d then out[#out + 1] = d end
  end
  return out
end
