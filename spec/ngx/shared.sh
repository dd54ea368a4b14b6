#!/bin/sh
# spec/ngx/shared.sh — the backend-neutral spec files, unchanged, inside a
# real nginx worker, on lcontext.ngx (ngx_lua on OpenResty's LuaJIT).
#
# Starts nginx (one worker, a free loopback port) with a location whose
# handler runs one spec file with spec/ngx/runner.lua (busted's describe/it
# and luassert, each test in the request's light thread); asks for each
# file of SHARED_SPECS in turn, prints what the runner answers, and adds up
# its counts. A spec that cannot hold in nginx is pending there and says
# why (spec/backend.lua). Then the error log must be clean. Bounded in time
# (each file has LIMIT seconds); loopback only; kills the nginx it started,
# by pid, whatever happens. The last line is `N passed, N failed`.
# SPECS="spec/x_spec.lua ..." runs other files; KEEP=1 keeps the prefix.
set -u

. "$(dirname "$0")/common.sh"

SHARED_SPECS="spec/sched_spec.lua spec/group_spec.lua spec/retry_spec.lua
  spec/breaker_spec.lua spec/hedge_spec.lua spec/patterns_spec.lua
  spec/patterns_scope_spec.lua spec/patterns_adaptive_spec.lua spec/trace_spec.lua
  spec/metrics_spec.lua spec/observe_spec.lua spec/deadline_spec.lua
  spec/derive_spec.lua spec/values_spec.lua spec/merge_spec.lua spec/done_spec.lua
  spec/cause_spec.lua spec/errors_spec.lua spec/tostring_spec.lua spec/options_spec.lua spec/badargs_spec.lua spec/roots_spec.lua spec/check_origin_spec.lua spec/gc_spec.lua
  spec/sync_spec.lua spec/tasks_spec.lua spec/vclock_spec.lua spec/socket_spec.lua spec/ffi_spec.lua"
SPECS=${SPECS:-$SHARED_SPECS}
LIMIT=${LIMIT:-180}

command -v "$NGINX" >/dev/null 2>&1 || { fail "nginx is not installed"; finish; }
[ -f "$MODULES/ngx_http_lua_module.so" ] || { fail "no $MODULES/ngx_http_lua_module.so"; finish; }
[ -f "$BUILD/lcontext/core.so" ] || { fail "no $BUILD/lcontext/core.so (make build-jit)"; finish; }
"$LUA" -e 'require "socket"' 2>/dev/null || { fail "$LUA with LuaSocket is needed"; finish; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/lcontext-shared.XXXXXX")
mkdir -p "$DIR/logs" "$DIR/tmp"
PORT=$("$LUA" -e '
  local s = require "socket"
  local t = assert(s.bind("127.0.0.1", 0))
  local _, port = t:getsockname()
  print(port)
  t:close()')

# The worker reads the checkout (the spec files, lua/, build-jit/): as
# root it runs as root, as the suite's own processes do.
USER_LINE=
[ "$(id -u)" = 0 ] && USER_LINE="user root;"
cat > "$DIR/nginx.conf" <<EOF
load_module $MODULES/ndk_http_module.so;
load_module $MODULES/ngx_http_lua_module.so;
$USER_LINE
worker_processes 1;
error_log logs/error.log info;
pid logs/nginx.pid;
# what the specs read of the environment (the backend; the runtime that
# child interpreters run on, as in the luajit suite)
env LCONTEXT_SPEC_BACKEND=ngx;
env LCONTEXT_LUA=luajit;
# the ports of tools/peer.lua, for spec/socket_spec.lua ("<tcp> <udp>")
env LCONTEXT_PEER;
env PATH;
env HOME;
env TMPDIR;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    lua_package_path "$ROOT/?.lua;$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;";
    lua_package_cpath "$BUILD/?.so;;";
    lua_socket_log_errors off;
    lua_shared_dict lcontext_spec 1m;
    send_timeout ${LIMIT}s;
    server {
        listen 127.0.0.1:$PORT;
        location = /spec { content_by_lua_block {
            require("spec.ngx.runner").run(ngx.var.arg_file)
        } }
    }
}
EOF

# {=== the peer of spec/socket_spec.lua: tools/peer.lua (plain LuaSocket),
# started here, its ports passed to the worker in LCONTEXT_PEER; stopped
# by its pid at the end (it also exits by itself after 300 s idle) ===}
PEER_PID=
stop_peer() {
  [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null
  PEER_PID=
}
trap 'stop_peer; cleanup' EXIT
case " $SPECS " in
  *socket_spec.lua*)
    (cd "$ROOT" && exec "$LUA" tools/peer.lua 300) > "$DIR/peer.out" 2>&1 &
    PEER_PID=$!
    i=0
    while [ ! -s "$DIR/peer.out" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    LCONTEXT_PEER=$(head -1 "$DIR/peer.out")
    # its "a reset peer" test: nginx itself logs the reset of a cosocket's
    # connection at [error] (lua_socket_log_errors only quiets ngx_lua's own)
    LOG_EXPECTED='recv\(\) failed \(104: Connection reset by peer\).*socket_spec\.lua' 
    case "$LCONTEXT_PEER" in
      [0-9]*" "[0-9]*) export LCONTEXT_PEER ;;
      *) fail "tools/peer.lua starts (it said: $LCONTEXT_PEER)"; LCONTEXT_PEER= ;;
    esac
    ;;
esac

# started from the checkout, so that the workers' working directory is it
# (the specs name files relative to it, as under busted)
start_nginx() {
  (cd "$ROOT" && nginx_start) || { fail "nginx starts"; finish; }
  MASTER=$(cat "$DIR/logs/nginx.pid" 2>/dev/null)
}
# a file that did not finish may have left its light threads in the
# worker: the next file gets a new nginx (this one is killed, by pid)
restart_nginx() {
  pids="$MASTER $(workers_of "$MASTER")"
  kill -KILL $pids 2>/dev/null
  MASTER=
  start_nginx
}
start_nginx

# one file: its output, then its counts added
for f in $SPECS; do
  echo "-- $f (in nginx, lcontext.ngx)"
  "$LUA" -e "PORT, FILE, LIMIT = $PORT, '$ROOT/$f', $LIMIT" -e '
    local s = require "socket"
    local c
    for _ = 1, 100 do -- nginx may still be starting
      c = s.tcp()
      c:settimeout(LIMIT)
      if c:connect("127.0.0.1", PORT) then break end
      c:close(); c = nil
      s.sleep(0.05)
    end
    if not c then print("not ok - no connection to nginx") os.exit(1) end
    c:send("GET /spec?file=" .. FILE .. " HTTP/1.0\r\nHost: spec\r\n\r\n")
    local data, err, partial = c:receive("*a")
    data = data or partial or ""
    local body = data:match("\r\n\r\n(.*)$") or data
    io.write(body)
    if err and err ~= "closed" then print("not ok - " .. FILE .. ": " .. err) end
  ' > "$DIR/out" 2>&1
  grep -v '^ok - ' "$DIR/out" | grep -vE '^[0-9]+ passed, [0-9]+ failed, [0-9]+ pending$'
  n_ok=$(grep -c '^ok - ' "$DIR/out")
  n_not=$(grep -c '^not ok - ' "$DIR/out")
  n_pend=$(grep -c '^pending - ' "$DIR/out")
  last=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ pending$' "$DIR/out" | tail -1)
  if [ -z "$last" ]; then
    F=$((F + 1))
    echo "not ok - $f: the runner did not finish (no counts; crashed or timed out)"
    restart_nginx
  fi
  P=$((P + n_ok)); F=$((F + n_not))
  echo "   $n_ok passed, $n_not failed, $n_pend pending"
done

# {=== stop, then the error log ===}
if nginx_quit; then
  pass "nginx -s quit stops nginx"
else
  fail "nginx -s quit stops nginx within 10 s"
fi
log_clean
finish
