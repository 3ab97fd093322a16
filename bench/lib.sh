# Shared by the bench scripts (sourced): the seeded link set and the nginx
# `return 302` baseline, the same in every comparison.

# seed_csv N FILE: N links k0000000 .. k<N-1>, each to its own landing URL
# (the codes bench/wrk/codes.lua draws).
seed_csv() {
  awk -v n="$1" 'BEGIN { print "code,url"; for (i = 0; i < n; i++) printf "k%07d,https://example.com/landing/%d\n", i, i }' > "$2"
}

# nginx_conf DIR WORKERS LISTEN [HTTP]: DIR/nginx.conf for nginx `return 302`
# with WORKERS workers, access log off, connections kept for good. LISTEN is
# the server block's listen (and TLS) lines; HTTP, lines for the http block.
# Run it with `nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`.
nginx_conf() {
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<NGINX
worker_processes $2;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
${4:-}
    server {
$3
        location / { return 302 https://example.com/landing/0; }
    }
}
NGINX
}
