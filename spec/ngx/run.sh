#!/bin/sh
# spec/ngx/run.sh — lcontext in a real nginx (ngx_lua on OpenResty's LuaJIT).
#
# Builds a prefix in a temporary directory from examples/openresty/ (its
# nginx.conf on a free loopback port, its handlers.lua, this checkout's lua/
# and build-jit/), starts nginx with 2 workers, runs spec/ngx/client.lua
# against it over HTTP, stops nginx with `nginx -s quit` and reads its error
# log. Bounded in time; loopback only. Needs nginx, libnginx-mod-http-lua,
# lua-resty-core, lua5.4 + LuaSocket, and build-jit/lcontext/core.so
# (make build-jit). The last line is `N passed, N failed`; the exit status
# is non-zero if anything failed. KEEP=1 keeps the directory;
# LCONTEXT_NGX_ABORTS=0 leaves out the requests that die mid-wait,
# LCONTEXT_NGX_MIX=0 sends their two halves one after the other (client.lua);
# LCONTEXT_NGX_ON_SPIN=CMD runs CMD on a worker that spins (common.sh).
set -u

. "$(dirname "$0")/common.sh"

# {=== what it needs ===}
command -v "$NGINX" >/dev/null 2>&1 || { fail "nginx is not installed"; finish; }
[ -f "$MODULES/ngx_http_lua_module.so" ] || { fail "no $MODULES/ngx_http_lua_module.so (libnginx-mod-http-lua)"; finish; }
[ -f "$MODULES/ndk_http_module.so" ] || { fail "no $MODULES/ndk_http_module.so (libnginx-mod-http-ndk)"; finish; }
[ -f "$BUILD/lcontext/core.so" ] || { fail "no $BUILD/lcontext/core.so (make build-jit)"; finish; }
"$LUA" -e 'require "socket"' 2>/dev/null || { fail "$LUA with LuaSocket is needed for the client"; finish; }

# {=== the prefix ===}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/lcontext-ngx.XXXXXX")
mkdir -p "$DIR/logs" "$DIR/tmp"
ln -s "$ROOT/lua" "$DIR/lua"
ln -s "$BUILD" "$DIR/lib"
cp "$ROOT/examples/openresty/handlers.lua" "$DIR/"
# test-only locations (requests that die, each worker's idle figures),
# included in the example's server block
cp "$ROOT/spec/ngx/abort_handlers.lua" "$ROOT/spec/ngx/abort.conf" "$DIR/"
# lcontext.socket's test locations (cosockets bounded by a context)
cp "$ROOT/spec/ngx/sock_handlers.lua" "$ROOT/spec/ngx/sock.conf" "$DIR/"

PORT=$("$LUA" -e '
  local s = require "socket"
  local t = assert(s.bind("127.0.0.1", 0))
  local _, p = t:getsockname()
  t:close()
  print(p)')
[ -n "$PORT" ] || { fail "no free port"; finish; }

{
  # as root the workers run as an unprivileged user: www-data on Debian
  if [ "$(id -u)" = 0 ]; then
    if id www-data >/dev/null 2>&1; then echo "user www-data;"; else echo "user nobody;"; fi
  fi
  sed -e "s|127\.0\.0\.1:8080|127.0.0.1:$PORT|" \
      -e "s|/usr/lib/nginx/modules/|$MODULES/|" \
      -e "/^ *listen 127\.0\.0\.1:/a\\
        include abort.conf;\\
        include sock.conf;" "$ROOT/examples/openresty/nginx.conf"
} > "$DIR/nginx.conf"
# the workers (www-data) read the prefix and what its links point to
chmod -R a+rX "$DIR"
chmod 1777 "$DIR/tmp"

# {=== start ===}
if "$NGINX" -p "$DIR/" -c nginx.conf -t > "$DIR/config-test.log" 2>&1; then
  pass "nginx -t accepts examples/openresty/nginx.conf"
else
  cat "$DIR/config-test.log"
  fail "nginx -t accepts examples/openresty/nginx.conf"
  finish
fi
nginx_start || { fail "nginx starts"; finish; }
# ready once it answers on the port
"$LUA" -e "PORT = $PORT" -e '
  local s = require "socket"
  for _ = 1, 100 do
    local c = s.tcp()
    c:settimeout(0.2)
    if c:connect("127.0.0.1", PORT) then c:close() os.exit(0) end
    c:close()
    s.sleep(0.05)
  end
  os.exit(1)'
if [ $? = 0 ] && [ -n "$MASTER" ]; then
  record_workers
  pass "nginx starts with 2 workers on 127.0.0.1:$PORT"
else
  cat "$DIR/start.log" "$DIR/logs/error.log" 2>/dev/null
  fail "nginx starts"
  finish
fi

# {=== the checks over HTTP ===}
# socket_client.lua first (lcontext.socket over cosockets): client.lua's
# idle checks then cover what its requests may have left behind.
# LCONTEXT_NGX_SOCKET_ONLY=1 runs socket_client.lua alone.
CLIENTS="socket_client.lua client.lua"
[ "${LCONTEXT_NGX_SOCKET_ONLY:-0}" = 1 ] && CLIENTS="socket_client.lua"
for client in $CLIENTS; do
  timeout 150 "$LUA" "$ROOT/spec/ngx/$client" "$PORT" > "$DIR/client.log" 2>&1
  rc=$?
  cat "$DIR/client.log"
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$DIR/client.log" | tail -1)
  if [ -n "$line" ]; then
    P=$((P + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
    F=$((F + $(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed$/\1/')))
    [ $rc = 0 ] || [ "$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed$/\1/')" != 0 ] \
      || fail "$client exited with status $rc"
  else
    fail "$client ended without its counts (status $rc)"
  fi
done

# {=== libev untouched: a worker has nginx's own epoll fd, and no second
# one (libev's default loop makes one when lcontext's scheduler is used) ===}
workers=$(workers_of "$MASTER")
nw=0; bad=
for w in $workers; do
  n=$(ls -l "/proc/$w/fd" 2>/dev/null | grep -c 'anon_inode:\[eventpoll\]')
  nw=$((nw + 1))
  [ "$n" = 1 ] || bad="$bad $w:$n"
done
if [ $nw = 2 ] && [ -z "$bad" ]; then
  pass "2 workers, each with nginx's epoll only: lcontext never took libev's loop"
else
  fail "2 workers, each with nginx's epoll only (workers:$workers; epoll fds:$bad)"
fi

# {=== stop ===}
if nginx_quit; then
  pass "nginx -s quit stops nginx cleanly ($QUIT_SECONDS s)"
else
  fail "nginx -s quit stops nginx within 10 s"
fi

# {=== the error log ===}
LOG="$DIR/logs/error.log"
log_clean
# (the C core writes what it cannot raise to stderr, which is this log,
# without a level: "lcontext: error in a context watch: ...")
bad=$(grep -E '^lcontext: ' "$LOG")
if [ -z "$bad" ]; then
  pass "the error log has no line the C core wrote to stderr"
else
  echo "$bad" | head -20
  fail "the error log has no line the C core wrote to stderr"
fi
bad=$(grep -E '\[warn\]' "$LOG" | grep -iE 'lcontext|lua')
if [ -z "$bad" ]; then
  pass "the error log has no warning from lcontext or ngx_lua"
else
  echo "$bad" | head -20
  fail "the error log has no warning from lcontext or ngx_lua"
fi
if grep -q 'worker process .* exited with code 0' "$LOG" && ! grep -qE 'exited on signal|exited with code [1-9]' "$LOG"; then
  pass "every worker exited with code 0"
else
  grep -E 'exited' "$LOG" | head
  fail "every worker exited with code 0"
fi

finish
