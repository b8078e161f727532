#!/bin/sh
# Makes a throwaway devtest world with the voyager mod and the voyager_test
# driver mod, and a minetest.conf for a headless server that talks to a
# gateway. Shared by smoke.sh and the Python end-to-end tests.
#
#   make_world.sh WORLD_DIR CONF_FILE URL TOKEN UDP_PORT ["key = value" ...]
#
# Extra arguments are appended to the config as lines (a later line wins).
set -eu

[ $# -ge 5 ] || { echo "usage: $0 WORLD_DIR CONF_FILE URL TOKEN UDP_PORT [\"key = value\" ...]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
WORLD=$1
CONF=$2
URL=$3
TOKEN=$4
PORT=$5
shift 5

mkdir -p "$WORLD/worldmods"
rm -rf "$WORLD/worldmods/voyager" "$WORLD/worldmods/voyager_test"
cp -r "$HERE/../voyager" "$WORLD/worldmods/voyager"
cp -r "$HERE/voyager_test" "$WORLD/worldmods/voyager_test"
printf 'gameid = devtest\nbackend = sqlite3\nplayer_backend = sqlite3\nauth_backend = sqlite3\n' > "$WORLD/world.mt"

cat > "$CONF" <<CONF
secure.trusted_mods = voyager
voyager.url = $URL
voyager.token = $TOKEN
mg_name = flat
port = $PORT
bind_address = 127.0.0.1
server_announce = false
enable_damage = false
CONF
for line in "$@"; do
	printf '%s\n' "$line" >> "$CONF"
done
