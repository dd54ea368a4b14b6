#!/bin/sh
# spec/ngx/lazy.sh — `require "lcontext"` done lazily, as every lua-resty
# library allows: an nginx whose only lcontext configuration is the two
# path directives (no init_by_lua), requiring the module inside handlers of
# the content, access, rewrite, timer and log phases, with lua_code_cache
# on (one server) and off (another). Each request's answer is checked, then
# the error log must be clean. (Requiring once yielded the request's light
# thread across require: "attempt to yield across C-call boundary", then
# "loop or previous error loading module 'lcontext'" for every request.)
# Bounded in time; loopback only; kills the nginx it started, by pid,
# whatever happens. The last line is `N passed, N failed`.
set -u

. "$(dirname "$0")/common.sh"

command -v "$NGINX" >/dev/null 2>&1 || { fail "nginx is not installed"; finish; }
[ -f "$MODULES/ngx_http_lua_module.so" ] || { fail "no ngx_http_lua_module.so"; finish; }
[ -f "$BUILD/lcontext/core.so" ] || { fail "no $BUILD/lcontext/core.so (make build-jit)"; finish; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/lcontext-lazy.XXXXXX")
mkdir -p "$DIR/logs" "$DIR/tmp"
ln -s "$ROOT/lua" "$DIR/lua"
ln -s "$BUILD" "$DIR/lib"
PORTS=$("$LUA" -e '
  local s = require "socket"
  local a, b = assert(s.bind("127.0.0.1", 0)), assert(s.bind("127.0.0.1", 0))
  print(select(2, a:getsockname()) .. " " .. select(2, b:getsockname()))
  a:close() b:close()')
PORT1=${PORTS% *}; PORT2=${PORTS#* }

# the handlers: the same in both servers (code cache on, then off)
HANDLERS='
    location = /content { content_by_lua_block {
      local c = require "lcontext"
      local ctx, cancel = c.with_timeout(c.background(), tonumber(ngx.var.arg_t))
      local ok, err = c.sleep(ctx, 1)
      cancel()
      ngx.say(tostring(err))
    } }
    location = /access {
      access_by_lua_block {
        local c = require "lcontext"
        local ctx = c.with_timeout(c.background(), 0.02)
        ngx.ctx.err = tostring(ctx:done())
      }
      content_by_lua_block { ngx.say(ngx.ctx.err) }
    }
    location = /rewrite {
      rewrite_by_lua_block {
        local c = require "lcontext.ngx"
        ngx.ctx.v = c.with_value(c.background(), "k", "rewrite"):value("k")
      }
      content_by_lua_block { ngx.say(ngx.ctx.v) }
    }
    location = /timer { content_by_lua_block {
      local dict = ngx.shared.lazy
      local key = "timer" .. ngx.var.server_port
      dict:delete(key)
      ngx.timer.at(0, function()
        local c = require "lcontext"
        local ctx = c.with_timeout(c.background(), 0.02)
        dict:set(key, tostring(ctx:done()))
      end)
      for _ = 1, 100 do
        if dict:get(key) then break end
        ngx.sleep(0.01)
      end
      ngx.say(dict:get(key))
    } }
    location = /log {
      content_by_lua_block { ngx.say("logged") }
      log_by_lua_block {
        local c = require "lcontext"
        local ctx, cancel = c.with_cancel(c.background())
        cancel("done")
        ngx.shared.lazy:set("log" .. ngx.var.server_port, tostring(ctx:cause()))
      }
    }
    location = /logged { content_by_lua_block {
      ngx.say(ngx.shared.lazy:get("log" .. ngx.var.server_port))
    } }
'
{
  if [ "$(id -u)" = 0 ]; then
    if id www-data >/dev/null 2>&1; then echo "user www-data;"; else echo "user nobody;"; fi
  fi
  cat <<EOF
load_module $MODULES/ndk_http_module.so;
load_module $MODULES/ngx_http_lua_module.so;
worker_processes 1;
error_log logs/error.log info;
pid logs/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  lua_package_path "\$prefix/lua/?.lua;\$prefix/lua/?/init.lua;;";
  lua_package_cpath "\$prefix/lib/?.so;;";
  lua_shared_dict lazy 1m;
  server {
    listen 127.0.0.1:$PORT1;
$HANDLERS
  }
  server {
    listen 127.0.0.1:$PORT2;
    lua_code_cache off;
$HANDLERS
  }
}
EOF
} > "$DIR/nginx.conf"
chmod -R a+rX "$DIR"
chmod 1777 "$DIR/tmp"

nginx_start || { fail "nginx starts"; finish; }
[ -n "$MASTER" ] && record_workers

# get PORT PATH EXPECTED NAME: one request (twice: a module that failed to
# load fails every later request too)
timeout 60 "$LUA" -e "P1, P2 = $PORT1, $PORT2" -e '
  local http = require "socket.http"
  local function get(port, path)
    for _ = 1, 50 do -- until nginx answers
      local body, code = http.request(("http://127.0.0.1:%d%s"):format(port, path))
      if body then return body:gsub("\n$", ""), code end
      require("socket").sleep(0.05)
    end
    return nil, "no answer"
  end
  local passed, failed = 0, 0
  for _, port in ipairs({ P1, P2 }) do
    local cache = port == P1 and "code cache on" or "code cache off"
    for round = 1, 2 do
      for _, c in ipairs({
        { "/content?t=0.05", "context deadline exceeded", "content: a sleep bounded by a deadline" },
        { "/content?t=5", "nil", "content: a sleep that completes" },
        { "/access", "context deadline exceeded", "access: ctx:done()" },
        { "/rewrite", "rewrite", "rewrite: require \"lcontext.ngx\", a value" },
        { "/timer", "context deadline exceeded", "timer: ctx:done() in a timer" },
        { "/log", "logged", "log: the request itself" },
        { "/logged", "done", "log: a cancel with a cause" },
      }) do
        local body, code = get(port, c[1])
        local name = ("%s (%s, request %d)"):format(c[3], cache, round)
        if body == c[2] and code == 200 then
          passed = passed + 1; print("ok - " .. name)
        else
          failed = failed + 1
          print(("not ok - %s: got %s %s, expected %s"):format(name, tostring(code), tostring(body), c[2]))
        end
      end
    end
  end
  print(passed .. " passed, " .. failed .. " failed")
' > "$DIR/client.log" 2>&1
cat "$DIR/client.log"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$DIR/client.log" | tail -1)
if [ -n "$line" ]; then
  P=$((P + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
  F=$((F + $(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed$/\1/')))
else
  fail "the client ended without its counts"
fi

nginx_quit
log_clean "lazy require: "
finish
