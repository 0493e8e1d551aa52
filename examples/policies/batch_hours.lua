-- batch_hours.lua: batch-priority jobs run only inside a daily window.
--
-- The clock is the snapshot's (snapshot.now, epoch seconds), so the same snapshot
-- always gets the same decisions, and a dry run shows what the live loop would do.
-- Inside the window this is the built-in policy. Outside it:
--   * batch jobs are not dispatched; each model's held batch jobs get one wait whose
--     wake_at is the window's next opening (the loop looks again then);
--   * starts and stops made only for batch work (models whose first eligible job is
--     batch) are dropped, so no worker starts and nothing is evicted for it.
-- Interactive jobs are untouched. A model with both kinds keeps the built-in's
-- capacity decisions, which count its batch backlog too.

local START_HOUR, END_HOUR = 22, 6   -- [22:00, 06:00): the window may wrap midnight
local UTC_OFFSET_HOURS = 0           -- the hours above are UTC + this
local REASON = string.format("batch jobs run between %02d:00 and %02d:00 (UTC%+d)",
                             START_HOUR, END_HOUR, UTC_OFFSET_HOURS)

local function local_seconds(now)    -- seconds since local midnight
  return (now + UTC_OFFSET_HOURS * 3600) % 86400
end

local function in_window(now)
  local h = local_seconds(now) / 3600
  if START_HOUR <= END_HOUR then return h >= START_HOUR and h < END_HOUR end
  return h >= START_HOUR or h < END_HOUR
end

local function next_opening(now)
  local wait = (START_HOUR * 3600 - local_seconds(now)) % 86400
  return now + (wait > 0 and wait or 86400)
end

function decide(snapshot)
  local decisions = builtin_decide(snapshot)
  if in_window(snapshot.now) then return decisions end
  local BATCH = PRIORITY.BATCH
  local batch_only = {}   -- models whose eligible jobs are all batch (heads are sorted)
  for model, heads in pairs(snapshot.queued) do
    if heads[1].priority == BATCH then batch_only[model] = true end
  end
  local out, held = {}, {}   -- held: model -> {job = first held job, jobs = how many}
  local function hold(job, n)
    local h = held[job.model_ref]
    if h then h.jobs = h.jobs + n else held[job.model_ref] = {job = job, jobs = n} end
  end
  for _, d in ipairs(decisions) do
    local job = d.job_id and snapshot.job(d.job_id)
    if d.action == "dispatch" and job.priority == BATCH then
      hold(job, 1)
    elseif (d.action == "start_worker" or d.action == "stop_worker")
        and batch_only[d.for_model] then
      -- no capacity for batch work outside the window
    elseif d.action == "wait" and job and job.priority == BATCH
        and d.reason ~= "retry backoff" then
      hold(job, d.jobs)
    else
      out[#out + 1] = d
    end
  end
  local opens = next_opening(snapshot.now)
  for model in pairs(snapshot.queued) do   -- the snapshot's order: deterministic
    local h = held[model]
    if h then
      out[#out + 1] = {action = "wait", job_id = h.job.job_id, model_ref = model,
                       jobs = h.jobs, reason = REASON, wake_at = opens}
    end
  end
  return out
end
