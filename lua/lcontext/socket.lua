--- lcontext.socket: LuaSocket (libev backend) or cosockets (nginx) bounded by
-- a context. README, "I/O".
if type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.ngx_lua_version then
  return require "lcontext.ngx_socket"
end
error("lcontext.socket: the libev version is being written")
