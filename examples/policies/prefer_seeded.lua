-- prefer_seeded.lua: seeded jobs take the free slots first.
--
-- A job is "seeded" when it replays with a recorded seed: a retry (attempts > 0),
-- whose client may already hold part of its stream. (Should the snapshot's JobView
-- gain a `seeded` flag, for jobs whose client chose the seed, that flag decides.)
--
-- Everything else is the built-in's: it decides how many jobs of each model go to
-- which workers, and this policy only chooses WHICH of the model's queued heads fill
-- those slots: within each priority class (interactive stays before batch), seeded
-- heads first, then admission order. Only a model's heads are visible (its free slots
-- plus a few), so a seeded job deep in the queue waits for its turn as usual.

local function seeded(job)
  if job.seeded ~= nil then return job.seeded end
  return job.attempts > 0
end

local function before(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  local sa, sb = seeded(a), seeded(b)
  if sa ~= sb then return sa end
  return a.order < b.order
end

function decide(snapshot)
  local decisions = builtin_decide(snapshot)
  local dispatches, waits = {}, {}   -- by model: its dispatches; its capacity wait
  for _, d in ipairs(decisions) do
    local job = d.job_id and snapshot.job(d.job_id)
    if d.action == "dispatch" then
      local list = dispatches[job.model_ref] or {}
      list[#list + 1] = d
      dispatches[job.model_ref] = list
    elseif d.action == "wait" and d.reason ~= "retry backoff" then
      waits[d.model_ref] = d
    end
  end
  for model, heads in pairs(snapshot.queued) do
    local order = {}
    for i = 1, #heads do order[i] = heads[i] end
    table.sort(order, before)
    local list = dispatches[model] or {}
    for i, d in ipairs(list) do
      d.job_id = order[i].job_id   -- same worker, the preferred job
      if seeded(order[i]) then d.reason = d.reason .. "; seeded job first" end
    end
    local wait, first = waits[model], order[#list + 1]
    if wait and first then wait.job_id = first.job_id end
  end
  return decisions
end
