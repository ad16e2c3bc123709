//! The Lua scripts of cluster mode. Each runs atomically in Redis (EVALSHA through
//! [`redis::Script`], which loads it again after a Redis restart), so an id, its PUBLISH
//! and the presence registry's check are one step for every node.
//!
//! Entries of the presence hash are `node|conn|spelling|acks` (`acks`: `1` or `0`); node
//! ids and user ids contain no `|` (both are `[A-Za-z0-9_.-]`), nor anything JSON escapes,
//! so the scripts write them into JSON as they are. Numbers are written with `%.0f`: Lua
//! numbers are doubles, exact up to 2^53, which ids (ms × 1000) stay below until 2255.
//!
//! The scripts name the per-node keys (`stim:users:NODE`, `stim:reaped:NODE`) themselves:
//! fine on one Redis (not a Redis Cluster, where every key must be declared and in one slot).

/// `next_id(floor)`: the cluster's next message id and its time (Redis's clock, ms): at
/// least the last id + 1, the time × 1000, and `floor` + 1 (the caller's highest id seen,
/// so that ids keep increasing after Redis lost its counter). `KEYS[1]` is the counter.
const NEXT_ID: &str = r#"
local function fmt(n) return string.format('%.0f', n) end
local function next_id(floor)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('GET', KEYS[1]) or '0')
  local id = math.max(last + 1, ms * 1000, tonumber(floor) + 1)
  redis.call('SET', KEYS[1], fmt(id))
  return id, ms
end
"#;

/// A public message. KEYS: counter, nodes. ARGV: floor, bus channel, body (the JSON members
/// after `id` and `ts`), live window (ms). Refused (`{0, 0}`, nothing numbered or
/// published) when fewer subscribers listen on the bus than nodes said they were alive
/// within the window: a node is resubscribing (or just died), and would miss it. Otherwise
/// publishes `{"id":…,"ts":…,BODY}` on the bus; returns `{id, ts}`.
const PUBLIC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[4]), '+inf')
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[2])[2]
if subs < live then return {0, 0} end
local id, ms = next_id(ARGV[1])
redis.call('PUBLISH', ARGV[2], '{"id":' .. fmt(id) .. ',"ts":' .. fmt(ms) .. ',' .. ARGV[3] .. '}')
return {id, ms}
"#;

/// A private message. KEYS: counter, presence. ARGV: floor, recipient key, sender's node,
/// body, node channel prefix, pending set prefix. If the recipient is online without acks
/// on a node that listens, publishes the delivery to that node and the echo to the
/// sender's (one payload when they are the same node) and returns `{id, ts, 1}`; otherwise
/// publishes nothing and returns `{id, ts, 0}`: the sender's node puts it in the mailbox.
/// A recipient online on a node that does not listen now is added to that node's pending
/// set (`stim:pending:NODE`): once subscribed again, the node delivers their mailboxes.
const PRIVATE: &str = r#"
local id, ms = next_id(ARGV[1])
local e = redis.call('HGET', KEYS[2], ARGV[2])
if not e then return {id, ms, 0} end
local node, conn, spelling, acks = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if not node or acks == '1' then return {id, ms, 0} end
local head = '{"id":' .. fmt(id) .. ',"ts":' .. fmt(ms) .. ',"to":"' .. spelling .. '",' .. ARGV[4]
if node == ARGV[3] then
  if redis.call('PUBLISH', ARGV[5] .. node, head .. ',"deliver":true,"echo":true,"hist":true}') == 0 then
    redis.call('SADD', ARGV[6] .. node, ARGV[2])
    return {id, ms, 0}
  end
else
  if redis.call('PUBLISH', ARGV[5] .. node, head .. ',"deliver":true,"echo":false,"hist":false}') == 0 then
    redis.call('SADD', ARGV[6] .. node, ARGV[2])
    return {id, ms, 0}
  end
  redis.call('PUBLISH', ARGV[5] .. ARGV[3], head .. ',"deliver":false,"echo":true,"hist":false}' )
end
return {id, ms, 1}
"#;

/// A private message committed to its recipient's mailbox: if the recipient is online
/// now (it may have logged in since the message was numbered), its node is told to
/// deliver it from there; the echo goes to the sender's node. KEYS: presence. ARGV:
/// recipient key, sender's node, the payload without its flags and closing brace, node
/// channel prefix, pending set prefix (as in `PRIVATE`, for a node that does not listen).
const ROUTE_STORED: &str = r#"
local e = redis.call('HGET', KEYS[1], ARGV[1])
local node = e and string.match(e, '^([^|]*)|')
if node and node ~= ARGV[2] then
  if redis.call('PUBLISH', ARGV[4] .. node, ARGV[3] .. ',"deliver":true,"stored":true,"echo":false,"hist":false}') == 0 then
    redis.call('SADD', ARGV[5] .. node, ARGV[1])
  end
end
local here = 'false'
if node == ARGV[2] then here = 'true' end
if redis.call('PUBLISH', ARGV[4] .. ARGV[2], ARGV[3] .. ',"deliver":' .. here .. ',"stored":true,"echo":true,"hist":false}') == 0 and here == 'true' then
  redis.call('SADD', ARGV[5] .. ARGV[2], ARGV[1])
end
return 1
"#;

/// A login. KEYS: presence. ARGV: key, entry, node, `joined` payload, bus channel, node
/// channel prefix, users set prefix. Registers the user here; returns 1 (new: `joined`
/// published), 0 (taken over from another node, which is told to kick its session) or 2
/// (it was registered on this node already: the hub decides).
const JOIN: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', ARGV[7] .. ARGV[3], ARGV[1])
if old then
  local onode, oconn = string.match(old, '^([^|]*)|([^|]*)|')
  if onode and onode ~= ARGV[3] then
    redis.call('SREM', ARGV[7] .. onode, ARGV[1])
    redis.call('PUBLISH', ARGV[6] .. onode, '{"k":"x","user":"' .. ARGV[1] .. '","conn":' .. oconn .. '}')
    return 0
  end
  return 2
end
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"#;

/// A session of this node ended. KEYS: presence. ARGV: key, node, conn, `left` payload,
/// bus channel, users set prefix. Only if the registry still names that session.
const LEAVE: &str = r#"
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then return 0 end
local node, conn = string.match(e, '^([^|]*)|([^|]*)|')
if node ~= ARGV[2] or conn ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', ARGV[6] .. node, ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"#;

/// A node's heartbeat, and the reaping of the dead. KEYS: presence, nodes (a sorted set
/// scored by the last heartbeat, Redis's clock). ARGV: node, expiry ms, bus channel, users
/// set prefix, reaped prefix, pending set prefix. Every node whose last heartbeat is older than the expiry
/// loses its users (`left` published for each, node `""`: every node announces it) and is
/// marked reaped for a day. Returns 1 if this node itself had been reaped (it was cut off
/// longer than the expiry: its users were announced gone).
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reaped = redis.call('DEL', ARGV[5] .. ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
for _, d in ipairs(dead) do
  local set = ARGV[4] .. d
  for _, u in ipairs(redis.call('SMEMBERS', set)) do
    local e = redis.call('HGET', KEYS[1], u)
    if e then
      local node, conn, spelling = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|')
      if node == d then
        redis.call('HDEL', KEYS[1], u)
        redis.call('PUBLISH', ARGV[3], '{"k":"l","user":"' .. spelling .. '","node":""}')
      end
    end
  end
  redis.call('DEL', set)
  redis.call('DEL', ARGV[6] .. d)
  redis.call('ZREM', KEYS[2], d)
  redis.call('SET', ARGV[5] .. d, '1', 'EX', 86400)
end
return reaped
"#;

/// A node shutting down. KEYS: presence, nodes. ARGV: node, bus channel, users set prefix,
/// pending set prefix.
/// Its users still registered there are removed with `left` (node `""`: every node, this
/// one too, announces it), its set deleted, and it leaves the nodes: the others learn at
/// once what they would otherwise learn by reaping it.
const RETIRE: &str = r#"
local set = ARGV[3] .. ARGV[1]
for _, u in ipairs(redis.call('SMEMBERS', set)) do
  local e = redis.call('HGET', KEYS[1], u)
  if e then
    local node, conn, spelling = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|')
    if node == ARGV[1] then
      redis.call('HDEL', KEYS[1], u)
      redis.call('PUBLISH', ARGV[2], '{"k":"l","user":"' .. spelling .. '","node":""}')
    end
  end
end
redis.call('DEL', set)
redis.call('DEL', ARGV[4] .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// This node's users, registered again (after Redis restarted or the subscriber was cut
/// off). KEYS: presence. ARGV: node, the highest conn id handed out before the snapshot,
/// users set prefix, bus channel, then key and entry of each local user. Entries of this
/// node no longer local (and older than the snapshot) are removed with `left`; local
/// users are registered (no `joined`: the others never saw them leave), except those
/// registered on another node meanwhile, which are returned (taken over there).
const SYNC: &str = r#"
local want = {}
for i = 5, #ARGV, 2 do want[ARGV[i]] = true end
local set = ARGV[3] .. ARGV[1]
for _, u in ipairs(redis.call('SMEMBERS', set)) do
  if not want[u] then
    local e = redis.call('HGET', KEYS[1], u)
    local node, conn, spelling = nil, nil, nil
    if e then node, conn, spelling = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|') end
    if node == ARGV[1] then
      if tonumber(conn) <= tonumber(ARGV[2]) then
        redis.call('HDEL', KEYS[1], u)
        redis.call('SREM', set, u)
        redis.call('PUBLISH', ARGV[4], '{"k":"l","user":"' .. spelling .. '","node":"' .. ARGV[1] .. '"}')
      end
    else
      redis.call('SREM', set, u)
    end
  end
end
local taken = {}
for i = 5, #ARGV, 2 do
  local e = redis.call('HGET', KEYS[1], ARGV[i])
  local node, conn = nil, nil
  if e then node, conn = string.match(e, '^([^|]*)|([^|]*)|') end
  if e and node ~= ARGV[1] then
    table.insert(taken, ARGV[i])
  elseif not (e and tonumber(conn) > tonumber(string.match(ARGV[i + 1], '^[^|]*|([^|]*)|'))) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('SADD', set, ARGV[i])
  end
end
return taken
"#;

/// The users of a node whose mailboxes got messages while it did not listen, taken (read
/// and emptied at once). KEYS: the node's pending set.
const TAKE_PENDING: &str = r#"
local users = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return users
"#;

/// The scripts, loaded once per node.
#[derive(Debug)]
pub(super) struct Scripts {
    pub public: redis::Script,
    pub private: redis::Script,
    pub route_stored: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub heartbeat: redis::Script,
    pub sync: redis::Script,
    pub retire: redis::Script,
    pub take_pending: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_ids = |body: &str| redis::Script::new(&format!("{NEXT_ID}{body}"));
        Scripts {
            public: with_ids(PUBLIC),
            private: with_ids(PRIVATE),
            route_stored: redis::Script::new(ROUTE_STORED),
            join: redis::Script::new(JOIN),
            leave: redis::Script::new(LEAVE),
            heartbeat: redis::Script::new(HEARTBEAT),
            sync: redis::Script::new(SYNC),
            retire: redis::Script::new(RETIRE),
            take_pending: redis::Script::new(TAKE_PENDING),
        }
    }
}
