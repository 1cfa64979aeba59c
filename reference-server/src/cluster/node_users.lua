-- The users a node instance holds state for, so that whoever reaps it after it
-- dies finds them. KEYS: the instance's set (its own slot). ARGV: users to add,
-- then '-', then users to remove.
local add = true
for i = 1, #ARGV do
  if ARGV[i] == '-' then
    add = false
  elseif add then
    redis.call('SADD', KEYS[1], ARGV[i])
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return 1
