#!/bin/sh
# Smoke test against the real server: loads the voyager mod in a headless
# minetestserver (5.6+) with a throwaway devtest world, talks to a local fake
# gateway (fake_gateway.py, standard-library Python), and checks the result
# the voyager_test mod writes.
#
#   luanti_mod/tests/smoke.sh
#
# End-to-end against a real gateway instead of the fake one:
#   VOYAGER_URL=ws://127.0.0.1:8000/ws/luanti/ VOYAGER_TOKEN=... \
#   VOYAGER_PERSONA=guide luanti_mod/tests/smoke.sh
# Other knobs: MINETESTSERVER (binary), SMOKE_TIMEOUT (s, default 60),
# SMOKE_KEEP=1 (keep the temp dir).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
SERVER=${MINETESTSERVER:-/usr/games/minetestserver}
LIMIT=${SMOKE_TIMEOUT:-60}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/voyager-smoke.XXXXXX")
GW_PID=""

cleanup() {
	if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; fi
	if [ "${SMOKE_KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

[ -x "$SERVER" ] || { echo "smoke: no server binary at $SERVER" >&2; exit 2; }

WORLD="$TMP/world"

if [ -n "${VOYAGER_URL:-}" ]; then
	MODE=e2e
	URL=$VOYAGER_URL
	TOKEN=${VOYAGER_TOKEN:-}
	PERSONA=${VOYAGER_PERSONA:-guide}
else
	MODE=fake
	TOKEN=smoke-token
	PERSONA=guide
	python3 "$HERE/fake_gateway.py" --port-file "$TMP/port" --token "$TOKEN" \
		--log "$TMP/gateway.jsonl" --drop-first --noise --lifetime $((LIMIT + 30)) &
	GW_PID=$!
	i=0
	while [ ! -s "$TMP/port" ]; do
		i=$((i + 1))
		[ $i -le 100 ] || { echo "smoke: fake gateway did not start" >&2; exit 1; }
		sleep 0.1
	done
	URL="ws://127.0.0.1:$(cat "$TMP/port")/ws/luanti/"
fi

UDP_PORT=$((40000 + $$ % 20000))
sh "$HERE/make_world.sh" "$WORLD" "$TMP/minetest.conf" "$URL" "$TOKEN" "$UDP_PORT" \
	"voyager.fallback_after = 10" \
	"voyager.reply_timeout = 20" \
	"voyager_test.persona = $PERSONA" \
	"voyager_test.timeout = $((LIMIT - 10))"

echo "smoke: mode=$MODE url=$URL world=$WORLD"
set +e
timeout "$LIMIT" "$SERVER" --world "$WORLD" --gameid devtest --config "$TMP/minetest.conf" \
	--logfile "$TMP/debug.txt" --quiet >"$TMP/server.out" 2>&1
RC=$?
set -e
echo "smoke: server exited with $RC"
grep -E '\[voyager' "$TMP/debug.txt" | sed 's/^/  log: /' | head -n 60 || true
if grep -qE 'ERROR\[Main\]: (ServerError|ModError|.*Runtime error)' "$TMP/debug.txt"; then
	echo "smoke: FAIL: the server hit a Lua error" >&2
	grep -E 'ERROR' "$TMP/debug.txt" | head -n 20 >&2
	exit 1
fi

python3 - "$WORLD/voyager_test_result.json" "$MODE" "$TMP/gateway.jsonl" <<'PY'
import json, sys
path, mode, gwlog = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.load(open(path))
except Exception as exc:
    print("smoke: FAIL: no result file (%s)" % exc)
    sys.exit(1)
problems = []
def check(cond, what):
    print("  %s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        problems.append(what)
check(r.get("connected"), "connected to the gateway")
check(r.get("ready"), "welcome received (personas %s)" % r.get("personas"))
check(r.get("reply") and r["reply"].get("text"), "reply text: %r" % (r.get("reply") or {}).get("text"))
check(not (r.get("reply") or {}).get("fallback"), "reply came from the platform, not the fallback")
check(r.get("rated"), "rating acknowledged")
check(r.get("ok"), "test finished: %s" % r.get("finish_reason"))
if mode == "fake":
    acts = {a["name"]: a for a in r.get("actions", [])}
    check(len(r.get("deltas", [])) == 2, "two deltas: %r" % r.get("deltas"))
    check(r.get("chat") and r["chat"][0] == "Hello there, traveller!", "chat chunks: %r" % r.get("chat"))
    check(r.get("disconnects", 0) >= 1, "reconnected after the first connection was dropped")
    check(acts.get("jump", {}).get("ok") is True, "jump ran")
    check(acts.get("move", {}).get("ok") is True, "move ran: %s" % acts.get("move", {}).get("detail"))
    check("say" in acts, "say ran: %s" % acts.get("say", {}).get("detail"))
    check(acts.get("dance", {}).get("ok") is False, "unknown action ignored")
    check([b["rule"] for b in r.get("blocked", [])] == ["no_valuables"], "blocked action reported")
    frames = [json.loads(l) for l in open(gwlog)]
    ins = [f["frame"] for f in frames if f.get("event") == "in"]
    hs = [f for f in frames if f.get("event") == "handshake"]
    check(hs and hs[-1]["headers"].get("authorization") == "Bearer smoke-token", "bearer token sent")
    hello = [f for f in ins if f["type"] == "hello"]
    check(hello and hello[0].get("protocol") == 1 and isinstance(hello[0]["protocol"], int),
          "hello with integer protocol 1: %r" % (hello[:1],))
    raw_hello = [f["raw"] for f in frames if f.get("event") == "in" and f["frame"]["type"] == "hello"]
    check(bool(raw_hello) and ('"protocol":1,' in raw_hello[0] or '"protocol":1}' in raw_hello[0]), "raw hello: %s" % raw_hello[:1])
    ask = [f for f in ins if f["type"] == "ask"]
    check(ask and ask[0]["persona"] == "guide" and ask[0]["player"] == "smoke_player"
          and ask[0]["context"].get("pos") and isinstance(ask[0].get("max_tokens"), int),
          "ask frame: %s" % json.dumps(ask[:1])[:300])
    rate = [f for f in ins if f["type"] == "rate"]
    check(rate and rate[0]["score"] == 1 and rate[0]["exchange"] == r["reply"]["exchange"], "rate frame")
    check(any(f.get("event") == "pong" and f.get("data") == "are-you-there" for f in frames),
          "answered the WebSocket ping with a pong")
    check(any(f.get("event") == "close" and f.get("code") == 1001 for f in frames),
          "closed cleanly (1001) on shutdown")
if problems:
    print("smoke: FAIL (%d problem(s))" % len(problems))
    sys.exit(1)
print("smoke: PASS")
PY

[ "$MODE" = fake ] || exit 0

# Second run: the mod is NOT trusted. It must log how to fix that, keep the
# server running, and answer with a scripted (fallback) line.
echo "smoke: untrusted run (fallback mode)"
WORLD2="$TMP/world2"
mkdir -p "$WORLD2/worldmods"
cp -r "$WORLD/worldmods/voyager" "$WORLD/worldmods/voyager_test" "$WORLD2/worldmods/"
cp "$WORLD/world.mt" "$WORLD2/world.mt"
grep -v '^secure.trusted_mods' "$TMP/minetest.conf" | sed 's/^voyager.fallback_after.*/voyager.fallback_after = 1/' \
	> "$TMP/minetest2.conf"
set +e
timeout "$LIMIT" "$SERVER" --world "$WORLD2" --gameid devtest --config "$TMP/minetest2.conf" \
	--logfile "$TMP/debug2.txt" --quiet >"$TMP/server2.out" 2>&1
RC=$?
set -e
echo "smoke: server exited with $RC"
grep -E '\[voyager' "$TMP/debug2.txt" | sed 's/^/  log: /' | head -n 20 || true
python3 - "$WORLD2/voyager_test_result.json" "$TMP/debug2.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
problems = []
def check(cond, what):
    print("  %s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        problems.append(what)
check("secure.trusted_mods = voyager" in log, "told the operator to add secure.trusted_mods")
check(not r.get("connected"), "did not connect")
check((r.get("reply") or {}).get("fallback") is True, "fallback reply: %r" % (r.get("reply") or {}).get("text"))
check(r.get("chat"), "the canned line went to chat")
check(r.get("ok"), "test finished: %s" % r.get("finish_reason"))
if problems:
    print("smoke: FAIL (untrusted run)")
    sys.exit(1)
print("smoke: PASS (untrusted run)")
PY

# Third run: trusted, but with a token the gateway refuses (HTTP 403 on the
# handshake, as Daphne answers a consumer that closes before accepting).
echo "smoke: refused-token run"
WORLD3="$TMP/world3"
mkdir -p "$WORLD3/worldmods"
cp -r "$WORLD/worldmods/voyager" "$WORLD/worldmods/voyager_test" "$WORLD3/worldmods/"
cp "$WORLD/world.mt" "$WORLD3/world.mt"
sed -e 's/^voyager.token.*/voyager.token = wrong-token/' -e 's/^voyager.fallback_after.*/voyager.fallback_after = 1/' \
	"$TMP/minetest.conf" > "$TMP/minetest3.conf"
set +e
timeout "$LIMIT" "$SERVER" --world "$WORLD3" --gameid devtest --config "$TMP/minetest3.conf" \
	--logfile "$TMP/debug3.txt" --quiet >"$TMP/server3.out" 2>&1
set -e
grep -E '\[voyager' "$TMP/debug3.txt" | sed 's/^/  log: /' | head -n 5 || true
python3 - "$WORLD3/voyager_test_result.json" "$TMP/debug3.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
ok = ("token refused" in log and (r.get("reply") or {}).get("fallback") is True and r.get("ok")
      and log.count("token refused") == 1)
print("  %s token refused once, long backoff, fallback reply" % ("ok  " if ok else "FAIL"))
if not ok:
    print("smoke: FAIL (refused-token run)")
    sys.exit(1)
print("smoke: PASS (refused-token run)")
PY

