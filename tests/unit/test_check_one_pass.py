"""`gwserver check` names every problem of a conf in one run (issue 18 item 5): a conf with
mistakes of every kind lists them all at once, and an upstream that exists but is invalid is
reported for what is wrong with it, never as unknown to the routes that use it."""
import subprocess
import sys

CONF = '''
colour = "blue"                                     # 1 unknown top-level key
[server]
workers = 0                                         # 2
keepalive = -1                                      # 3
bind = ["localhost"]                                # 4
speed = 9                                           # 5 unknown key
[log]
level = "loud"                                      # 6
[admin]
token = "has space"                                 # 7
[plugins]
nosuch = {}                                         # 8 unknown plugin
rate_limit = { rate = -1 }                          # 9 bad global plugin config
[upstreams.demo]
targets = [{ url = "ftp://x" }]                     # 10
pass_host = "rewrite"                               # 11 needs upstream_host
[upstreams.heavy]
targets = [{ url = "http://127.0.0.1:9001", weight = 0 }]   # 12 every weight 0
tls = { ca_file = "/nonexistent/ca.pem" }           # 13 missing TLS file
[[routes]]
id = "a"
paths = ["/a", "nostart"]                           # 14 path
upstream = "demo"                                   # (invalid upstream: not "unknown")
plugins = { headers = { colour = 1 } }              # 15 plugin config
[[routes]]
id = "a"                                            # 16 duplicate id
paths = ["/b"]
upstream = "missing"                                # 17 unknown upstream
[[routes]]
id = "c"
paths = ["/c/*rest/x"]                              # 18 catch-all not last
upstream = "heavy"
methods = "GET"                                     # 19 not a list
[[routes]]
id = "d"
paths = ["/d"]
upstream = "demo"
claims = { role = "admin" }                         # 20 claims without jwt
[tls]
bind = ["127.0.0.1:8443"]
certificates = [{ cert = "/nonexistent/site.pem", key = "/nonexistent/site.key" }]   # 21, 22
'''

EXPECTED = [
    "colour: unknown key", "server.workers: must be a positive integer", "server.keepalive",
    "server.bind[0]", "server.speed: unknown key", "log.level", "admin.token",
    "plugins.nosuch: unknown plugin", "plugins.rate_limit", "upstream demo: targets[0].url",
    "upstream demo: pass_host=rewrite needs upstream_host",
    "upstream heavy: every target has weight 0", "upstream heavy: tls.ca_file",
    "route a: paths[1] must start with /", "route a: plugins.headers",
    "route a: duplicate route id (routes[0] and routes[1])",
    'route a: upstream: unknown upstream id "missing"',
    "route c: paths[0] has a catch-all that is not the last segment",
    "route c: methods", "route d: claims: matching on claims needs",
    "tls.certificates[0].cert: /nonexistent/site.pem does not exist",
    "tls.certificates[0].key: /nonexistent/site.key does not exist",
]


def test_every_mistake_is_named_in_one_run(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(CONF)
    out = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    problems = [line.strip() for line in out.stderr.splitlines()[1:]]
    missing = [e for e in EXPECTED if not any(p.startswith(e) for p in problems)]
    assert not missing, (missing, problems)
    assert len(problems) == len(EXPECTED), problems       # each once, nothing spurious
    assert 'unknown upstream id "demo"' not in out.stderr
    assert "Traceback" not in out.stderr
