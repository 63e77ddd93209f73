"""One script call deciding many keys: the batch form of a one-key script.

Every script of this package decides one key (``KEYS[1]``, its own ``ARGV``).
Calls made together are sent as a single call of the batch form of the scripts
they use: each script's unchanged body becomes a function, run once per call, in
the calls' order, inside one script. Each decision is still atomic (the whole
batch is), and the client packs, sends and parses one command instead of one
per decision, which is most of a decision's cost in the client.

A decision that raises (``redis.call`` on a key of the wrong type) is caught
with ``pcall`` and becomes that decision's error reply; the others stand. A
``nil`` reply becomes ``false`` (a null reply, as the one-key call returns), so
the reply array has no holes.

Only for a client on one server: a Cluster runs a script on keys of one slot.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

_FUNCTION_LUA = """
decide[%d] = function(KEYS, ARGV)
%s
end
"""

_LOOP_LUA = """
local out = {}
local at = 1
local A = ARGV
if #ARGV == 1 then  -- the calls' arguments as one JSON array of strings
  A = cjson.decode(ARGV[1])
end
for i = 1, #KEYS do
  local which = tonumber(A[at])
  local count = tonumber(A[at + 1])
  local args = {}
  for j = 1, count do
    args[j] = A[at + 1 + j]
  end
  at = at + count + 2
  local ok, reply = pcall(decide[which], {KEYS[i]}, args)
  if not ok then
    if type(reply) == 'table' and reply.err then
      out[i] = reply
    else
      out[i] = redis.error_reply(tostring(reply))
    end
  elseif reply == nil then
    out[i] = false
  else
    out[i] = reply
  end
end
return out
"""


def batch_lua(bodies: Sequence[str]) -> str:
    """Return the batch form of the one-key scripts ``bodies`` (numbered from 1)."""
    functions = "".join(_FUNCTION_LUA % (number, body) for number, body in enumerate(bodies, 1))
    return "local decide = {}\n" + functions + _LOOP_LUA


def pack(
    calls: Sequence[tuple[int, Sequence[str], Sequence[Any]]],
) -> tuple[list[str], list[Any]]:
    """Return the ``KEYS`` and ``ARGV`` of one batch call.

    ``calls``: ``(number, keys, args)`` per call, ``number`` naming its script
    in the batch form (from 1). The arguments go as one JSON array of strings
    (each as Redis would receive it) when every one is text or a number: the
    client then packs one argument instead of hundreds, which was most of a
    batch's cost in the client. Any other argument (bytes) sends them as they are.
    """
    keys: list[str] = []
    args: list[Any] = []
    for number, call_keys, call_args in calls:
        if len(call_keys) != 1:
            raise ValueError(f"a batched script call takes one key, got {list(call_keys)!r}")
        keys.append(call_keys[0])
        args.append(number)
        args.append(len(call_args))
        args.extend(call_args)
    text = _as_text(args)
    if text is None:
        return keys, args
    return keys, [json.dumps(text, ensure_ascii=False, separators=(",", ":"))]


def _as_text(args: list[Any]) -> list[str] | None:
    """Return ``args`` as Redis would receive them, as text; ``None`` if one is not text."""
    text: list[str] = []
    for arg in args:
        kind = type(arg)
        if kind is str:
            text.append(arg)
        elif kind is int or kind is float:  # not bool: redis-py refuses it
            text.append(repr(arg))
        else:
            return None
    return text


def unpack(reply: object, count: int) -> list[Any]:
    """Return the ``count`` replies of a batch call, or its error ``count`` times."""
    if isinstance(reply, BaseException):
        return [reply] * count
    if not isinstance(reply, list) or len(reply) != count:
        error = ValueError(f"a batch of {count} script calls got {reply!r}")
        return [error] * count
    return reply
