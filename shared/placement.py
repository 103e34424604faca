"""The placement index: which live host a new sandbox goes to, in Redis work that does not grow
with the number of hosts.

Hosts that offer the same templates and are in the same egress state form a **group**
(``group_id``: usually one or two groups for a whole fleet, whatever its size). Each group is
a sorted set of its live hosts scored by free slots (``keys.place_group``), where free is
what placement has always counted: capacity, minus the sandboxes placed on the host (its
``host_sandboxes``, warm ones included), plus its ready warm sandboxes (given back on demand).
``keys.place_template`` lists the groups that offer a template, ``keys.place_warm`` the hosts
with a ready warm sandbox of one ``template:mode`` kind, and ``keys.hosts_group`` the group
each host was last indexed in.

Placement (``PLACE``) reads the top of each group of the template (O(log N)) and checks that
host's true state (alive, still in that group, its free slots counted from its sets): an
entry that is wrong (a dead host, a drifted score) is mended on the spot and the next best is
read. Warm sandboxes still win: a few hosts of the kind's warm set are checked and the freest
of them claims one.

Keeping it current: every script that changes a host's slots rewrites that host's entry from
its true state (``reindex``), in the same atomic step (placement, release of a sandbox, lost,
the warm pool's reserve/ready/take), and every heartbeat rewrites it too. A score can only be
wrong after a write outside these scripts (a crash between two commands, a key edited by
hand), and then only until the host's next heartbeat, or the next placement that reads it.
A non-empty group is always registered under each of its templates (a host entering a group
registers it in the same step); an empty one is unregistered by placement.
"""

from __future__ import annotations

import hashlib

from shared import keys

# How many hosts of a kind's warm set placement checks (picked at random): the freest of them
# claims. Every host is checked while there are no more than this many with that kind.
WARM_CANDIDATES = 4


def group_id(templates: list[str], egress: str) -> str:
    """The placement group of a host offering ``templates`` whose egress state is ``egress``
    (``ok``: it can give sandboxes the internet): ``i:`` or ``n:`` and a digest of the
    template names."""
    digest = hashlib.sha1(",".join(sorted(set(templates))).encode()).hexdigest()[:16]
    return ("i:" if egress == "ok" else "n:") + digest


def _lua_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Key prefixes, and the two helpers every script that changes a host's slots ends with.
_PRELUDE = (
    f"local HOST = {_lua_quote(keys.host(''))}\n"
    f"local HOSTS_GROUP = {_lua_quote(keys.hosts_group())}\n"
    f"local GROUP = {_lua_quote(keys.place_group(''))}\n"
    f"local TPL = {_lua_quote(keys.place_template(''))}\n"
    f"local WARM = {_lua_quote(keys.warm(''))}\n"
    f"local WARM_HOSTS = {_lua_quote(keys.place_warm(''))}\n"
    """
-- A live host's free slots into its group; a host new to the group registers the group
-- under each of its templates, so a non-empty group is always found from its templates.
local function set_free(host, gid, templates, free)
  if gid == '' then return end
  if redis.call('ZADD', GROUP .. gid, free, host) == 1 then
    for t in string.gmatch(templates, '[^,]+') do redis.call('SADD', TPL .. t, gid) end
  end
end

-- A host's entry rewritten from its true state; a dead host (heartbeat expired) leaves its
-- group until it beats again.
local function reindex(host)
  local gid = redis.call('HGET', HOSTS_GROUP, host)
  if not gid then return end
  local h = redis.call('HMGET', HOST .. host, 'capacity', 'templates')
  if not h[1] then
    redis.call('ZREM', GROUP .. gid, host)
    return
  end
  set_free(host, gid, h[2] or '', tonumber(h[1]) - redis.call('SCARD', HOST .. host .. ':sandboxes')
           + redis.call('SCARD', WARM .. host))
end
"""
)


def lua(body: str) -> str:
    """``body`` with the index's key prefixes and its ``set_free``/``reindex`` helpers."""
    return _PRELUDE + body


# Announce a live host and rewrite its entry with its true free slots (a host that changed
# group, its templates or egress state, leaves the old one).
# KEYS: hosts, the host, hosts' last heartbeat, hosts' group.
# ARGV: host, ttl ms, now, group, capacity, templates (',A,B,'), catalog, egress, relay.
HEARTBEAT = lua("""
local host, gid = ARGV[1], ARGV[4]
local old = redis.call('HGET', KEYS[4], host)
redis.call('SADD', KEYS[1], host)
redis.call('HSET', KEYS[2], 'capacity', ARGV[5], 'templates', ARGV[6], 'catalog', ARGV[7],
           'egress', ARGV[8], 'relay', ARGV[9], 'updated', ARGV[3], 'group', gid)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], host, ARGV[3])
if old ~= gid then
  if old then redis.call('ZREM', GROUP .. old, host) end
  redis.call('HSET', KEYS[4], host, gid)
end
set_free(host, gid, ARGV[6], tonumber(ARGV[5]) - redis.call('SCARD', HOST .. host .. ':sandboxes')
         + redis.call('SCARD', WARM .. host))
return 1
""")

# A host's entry from its true state (after a release outside the other scripts, or the host
# going down).  ARGV: host.
REINDEX = lua("""
reindex(ARGV[1])
return 1
""")

# In one step: check the tenant's sandbox quota, pick a live host that has the template, and
# write the sandbox with its reservations (host slot, tenant slot, record, indexes) and the
# host's new free count. Concurrent creates can neither overshoot the quota nor take a host's
# last slot twice, and no moment exists where a slot is held without its record (every failure
# path then frees both with purge_sandbox).
# Warm pools (shared/pools.py): a host with a ready warm sandbox of the template and network
# mode wins (the freest of up to ARGV[11] of them); the sandbox is popped from its pool sets
# here, so no two creates claim the same one, and the record (which already holds its host
# slot) becomes the tenant's: the sandbox's id is the warm one's. Otherwise the freest host of
# the template's groups (with egress, for the internet), counting warm sandboxes as free (they
# are given back on demand): when the chosen host has no free slot left, one of its warm
# sandboxes is taken out (``evict``, status deleting, due for the reaper) and its slot goes to
# the new sandbox; the host removes it before starting this one.
# KEYS: tenant's sandboxes, the sandbox, idle index, expiry index, the template's groups, the
# kind's warm hosts.
# ARGV: template, sandbox id, tenant, quota, now, max lifetime, sandbox key prefix, network
# JSON, internet?, pool kind (template:mode, '' for none), warm candidates.
# -> {'ok', host, id, evicted id or ''} | {'quota', used} | {'full'} | {'egress', why}
PLACE = lua("""
local used = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[7] .. id) == 1 then
    used = used + 1
  else
    redis.call('SREM', KEYS[1], id)  -- a stale id holds no slot
  end
end
if used >= tonumber(ARGV[4]) then return {'quota', used} end
local template, internet, kind = ARGV[1], ARGV[9] == '1', ARGV[10]

-- A live host's slots and what placement matches on; nil when its heartbeat expired.
local function state(host)
  local h = redis.call('HMGET', HOST .. host, 'capacity', 'templates', 'egress', 'group')
  if not h[1] then return nil end
  local cap = tonumber(h[1])
  local placed = redis.call('SCARD', HOST .. host .. ':sandboxes')
  return {cap = cap, placed = placed, free = cap - placed + redis.call('SCARD', WARM .. host),
          templates = h[2] or '', egress = h[3] or 'ok', group = h[4] or ''}
end

local best, st, warm = nil, nil, false
if kind ~= '' then
  for _, host in ipairs(redis.call('SRANDMEMBER', KEYS[6], tonumber(ARGV[11]))) do
    if redis.call('SCARD', WARM .. host .. ':' .. kind) == 0 then
      redis.call('SREM', KEYS[6], host)  -- none of the kind left there
    else
      local s = state(host)
      if s and string.find(s.templates, ',' .. template .. ',', 1, true)
          and (not internet or s.egress == 'ok') and (not best or s.free > st.free) then
        best, st, warm = host, s, true
      end
    end
  end
end

local gids = redis.call('SMEMBERS', KEYS[5])
if not best then
  -- Each round reads the top of every group; a wrong top entry is mended and read again, so
  -- the rounds beyond the first are paid once per wrong entry.
  for _ = 1, 100000 do
    local cand, cand_gid, cand_free = nil, nil, 0
    for i, gid in ipairs(gids) do
      if gid ~= '' and (not internet or string.sub(gid, 1, 2) == 'i:') then
        local top = redis.call('ZREVRANGEBYSCORE', GROUP .. gid, '+inf', '(0',
                               'WITHSCORES', 'LIMIT', 0, 1)
        if top[1] then
          if tonumber(top[2]) > cand_free then
            cand, cand_gid, cand_free = top[1], gid, tonumber(top[2])
          end
        elseif redis.call('EXISTS', GROUP .. gid) == 0 then
          redis.call('SREM', KEYS[5], gid)  -- an empty group
          gids[i] = ''
        end
      end
    end
    if not cand then break end
    local s = state(cand)
    if not s or s.group ~= cand_gid then
      redis.call('ZREM', GROUP .. cand_gid, cand)  -- dead, or indexed in another group since
    elseif s.free ~= cand_free then
      redis.call('ZADD', GROUP .. cand_gid, s.free, cand)  -- drifted: mended, read again
    else
      best, st = cand, s
      break
    end
  end
end

if not best then
  if internet then
    for _, gid in ipairs(gids) do
      if gid ~= '' and string.sub(gid, 1, 2) == 'n:' then
        for _, host in ipairs(redis.call('ZREVRANGE', GROUP .. gid, 0, 3)) do
          local why = redis.call('HGET', HOST .. host, 'egress')
          if why then return {'egress', host .. ': ' .. why} end  -- it would refuse one
        end
      end
    end
  end
  return {'full'}
end

local slots = HOST .. best .. ':sandboxes'
local wkey = WARM .. best
local id, evicted = ARGV[2], ''
if warm then
  id = redis.call('SPOP', wkey .. ':' .. kind)
  redis.call('SREM', wkey, id)
  redis.call('HDEL', ARGV[7] .. id, 'pool')
  if redis.call('SCARD', wkey .. ':' .. kind) == 0 then redis.call('SREM', KEYS[6], best) end
else
  if st.placed >= st.cap then
    evicted = redis.call('SPOP', wkey)
    local ekey = ARGV[7] .. evicted
    local ekind = (redis.call('HGET', ekey, 'template') or '') .. ':' ..
                  (redis.call('HGET', ekey, 'pool') or '')
    redis.call('SREM', wkey .. ':' .. ekind, evicted)
    if redis.call('SCARD', wkey .. ':' .. ekind) == 0 then
      redis.call('SREM', WARM_HOSTS .. ekind, best)
    end
    redis.call('SREM', slots, evicted)
    redis.call('HSET', ekey, 'status', 'deleting', 'deleting_at', ARGV[5])
    redis.call('ZADD', KEYS[4], ARGV[5], evicted)
  end
  redis.call('SADD', slots, id)
end
redis.call('SADD', KEYS[1], id)
redis.call('HSET', ARGV[7] .. id, 'tenant', ARGV[3], 'host', best, 'template', template,
           'status', 'creating', 'created_at', ARGV[5], 'network', ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[5], id)
redis.call('ZADD', KEYS[4], tonumber(ARGV[5]) + tonumber(ARGV[6]), id)
set_free(best, st.group, st.templates, st.free - 1)  -- a slot taken, or a warm one claimed
return {'ok', best, id, evicted}
""")
