"""``gwserver routes|upstreams|consumers put|get|list|delete|validate``, ``gwserver routes
status`` and ``gwserver consumers hash-key|hash-password``.

They talk to the etcd endpoints of the conf file. ``validate`` loads the current table from
etcd into the same ``LiveTable`` the gateway runs, adds the given items, and prints every
problem; ``put`` refuses whatever ``validate`` refuses. A route whose upstream is not in etcd
yet is accepted with a note: it answers 503 until the upstream arrives.
"""
import json
import sys
import time

from .errors import ConfigError
from .terminal import printable

# Everything else is imported when a command runs: `gwserver run` parses the same command line,
# and importing requests (urllib3, ssl) in the master would defeat the workers' gevent patching.

# WAITING: a waiting route's note says it; FENCED: what a refused route in etcd does (not
# said of a put refused here); decode_json: files are read as etcd values are
from .core.table import FENCED, WAITING, decode_json  # noqa: E402


def client_for(conf):
    from .sync.etcd import EtcdClient
    etcd = conf.etcd
    return EtcdClient(etcd["endpoints"], etcd["timeout"], etcd["username"], etcd["password"],
                      etcd["ca_file"], etcd["cert_file"], etcd["key_file"],
                      etcd["password_file"])


def read_items(source, kind):
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        data = decode_json(text)        # as the sync process reads an etcd value
    except ConfigError as exc:
        raise ConfigError(f"{'stdin' if source == '-' else source}: {exc}") from None
    items = data if isinstance(data, list) else [data]
    out, first = [], {}
    for i, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id:
            raise ConfigError(f"{source}: item {i}: needs an \"id\"")
        if item_id in first:        # (etcd would refuse the transaction, naming no item)
            raise ConfigError(f"{'stdin' if source == '-' else source}: item {i}: id "
                              f"{json.dumps(item_id)} given twice (also item "
                              f"{first[item_id]}): one value per key")
        first[item_id] = i
        if kind in ("upstreams", "consumers"):
            item = {k: v for k, v in item.items() if k != "id"}
        out.append((item_id, item))
    return out


def routes_using(conf, client, prefix, upstream_id):
    """Ids of the routes in etcd and in the conf file that use upstream ``upstream_id``
    (directly or through a plugin such as split)."""
    from .core.routes import ROUTE, upstream_refs
    from .plugins import load_registry
    registry = load_registry()
    users = []
    specs = [(spec, "conf file") for spec in conf.static_routes]
    _, kvs = client.range_prefix(f"{prefix}routes/")
    for key, value, _ in kvs:
        try:
            spec = json.loads(value)
        except (ValueError, RecursionError):      # rejected by the gateway too: no user
            continue
        if isinstance(spec, dict):      # "id" may be left out: the key gives it (docs/etcd.md)
            spec.setdefault("id", key[len(f"{prefix}routes/"):])
        specs.append((spec, "etcd"))
    for spec, _ in specs:
        try:
            if upstream_id in upstream_refs(ROUTE.validate(spec), registry):
                users.append(spec["id"])
        except ConfigError:
            continue
    return sorted(set(users))


def current_table(conf, client, prefix, keep_rejected=False, conf_path=None):
    """A LiveTable holding what etcd has now (its own rejections are not ours to report,
    unless ``keep_rejected``: ``routes list`` marks them), with the running gateway's
    version of what it refused when ``conf_path`` is given (keep_served)."""
    from .core.table import LiveTable
    from .sync.etcd import AuthRejected, EtcdError, EtcdRefused
    from .plugins import load_registry
    table = LiveTable.for_conf(conf, load_registry())
    note = None
    try:
        _, kvs = client.range_prefix(prefix)
        wanted = {"routes": {}, "upstreams": {}, "consumers": {}}
        for key, value, rev in kvs:
            kind, _, item_id = key[len(prefix):].partition("/")
            if kind in wanted and item_id:
                wanted[kind][item_id] = (rev, value)
        table.replace_all(wanted["routes"], wanted["upstreams"], wanted["consumers"])
        if conf_path is not None:
            keep_served(table, conf, conf_path, prefix, kvs)
    except (AuthRejected, EtcdRefused) as exc:
        note = f"{exc}; checked against the conf file's table only"
    except EtcdError as exc:
        note = f"etcd not reachable ({exc}); checked against the conf file's table only"
    if not keep_rejected:
        table.rejected.clear()
    return table, note


def keep_served(table, conf, conf_path, prefix, kvs):
    """Judge as the running gateway holds it: put in ``table`` the version the gateway
    serves of each route, upstream and consumer whose etcd version it refused (its last good
    one; one never served is taken out), then etcd's refused version again, refused again as
    there. Loaded afresh, an upstream the gateway refused as unfit for a route that uses it
    (docs/etcd.md) went in first, with no route yet to refuse it, and `routes validate` of
    that route unchanged said "error" where the gateway takes it; one refused for a bad TLS
    file was missing, and a route using it said "waits for it" where the gateway serves it.
    A new route refused for a path a served one holds, or a new consumer for a key one holds,
    went in first when its key sorts first, and the served one was refused in its place:
    `validate` and `put` of its update said "error" where the gateway takes it. Only when
    the gateway's state is there to trust (gateway_verdicts), as the served versions are
    read from what it published."""
    verdicts = gateway_verdicts(conf, conf_path, kvs) or {}
    refused = {"upstreams": [], "routes": [], "consumers": []}
    for key in verdicts:
        kind, _, item_id = key.partition("/")
        if kind in refused:
            refused[kind].append(item_id)
    if not any(refused.values()):
        return
    served = published_items(conf.etcd["runtime_dir"], prefix)
    again = []
    for kind, ids in refused.items():       # upstreams first: the routes find theirs
        wanted = getattr(table, f"wanted_{kind}")
        put = getattr(table, f"put_{kind[:-1]}")
        for item_id in ids:
            if item_id not in wanted:
                continue
            again.append((put, item_id, *wanted[item_id]))     # (before put replaces it)
            if item_id in served[kind]:
                version, spec = served[kind][item_id]
                put(item_id, json.dumps(spec), version)
            else:       # the gateway serves none of it: out, so what it holds goes in
                getattr(table, f"delete_{kind[:-1]}")(item_id)
    # etcd's versions again once every good one is in (ConfigSync.keep_last_good): an
    # upstream's before the last good version of a route refused too went in with no route
    # there to refuse it, and that route's fix was judged against it
    for put, item_id, etcd_version, raw in again:
        put(item_id, raw, etcd_version)


def published_items(runtime_dir, prefix):
    """{"routes": {id: [version, spec]}, "upstreams": {...}, "consumers": {...}}: what the
    gateway's workers are given now."""
    from .sync.shm import TableReader
    reader = TableReader(runtime_dir, prefix)
    try:
        steps = reader.updates()[0] if reader.changed() else []
    finally:
        reader.close()
    served = {"routes": {}, "upstreams": {}, "consumers": {}}
    for step, document in steps:
        if step == "full":
            served = {kind: dict(document["table"].get(kind, {})) for kind in served}
            continue
        for kind, items in served.items():
            for item_id, item in document.get(kind, {}).items():
                if item is None:
                    items.pop(item_id, None)
                else:
                    items[item_id] = item
    return served


def check(kind, items, table):
    """Return (problems, notes) for putting ``items`` into ``table``."""
    problems, notes = [], []
    for item_id, item in items if kind == "upstreams" else ():
        if not table.put_upstream(item_id, json.dumps(item), 1 << 60):
            problems.append(table.rejected[f"upstreams/{item_id}"])
    for item_id, item in items if kind == "consumers" else ():
        table.put_consumer(item_id, json.dumps(item), 1 << 60)
    # Judged once all are in, as the gateway takes one transaction: consumers that trade
    # credentials (two swap their keys) go in together when the last of them is put, and the
    # first, judged alone, was refused for the key its partner still held.
    problems += [table.rejected[f"consumers/{item_id}"] for item_id, _ in items
                 if kind == "consumers" and f"consumers/{item_id}" in table.rejected]
    for item_id, item in items if kind == "routes" else ():
        if not table.put_route(item_id, json.dumps(item), 1 << 60):
            # What the gateway does with such a route in etcd ("its paths answer 503 ..."):
            # said of a put refused here, it read as if the route had been written.
            reason = table.rejected[f"routes/{item_id}"].removesuffix(f" ({FENCED})")
            (notes if WAITING in reason else problems).append(reason)
        elif f"routes/{item_id}" in table.waiting:
            # Accepted, but waiting for its upstream (put_route says True): the note is what
            # tells the operator it answers 503 until then; it went unsaid.
            notes.append(table.rejected[f"routes/{item_id}"])
    if kind == "routes":
        # What `gwserver check` warns of in a conf file: a route that takes a path another
        # serves (or never gets it), here against what etcd and the conf file serve.
        from .core.routes import unreachable_paths
        notes.extend(unreachable_paths([r.spec for r in table.router.routes.values()],
                                       involving={item_id for item_id, _ in items}))
    return problems, notes


def main(kind, args):
    from .sync.etcd import EtcdError
    from .settings import load_conf
    try:
        conf = load_conf(args.conf)
    except ConfigError as exc:
        return _fail(exc.problems)
    if conf.etcd is None:
        return _fail([f"{args.conf}: no [etcd] section: the conf file's routes are the table"])
    prefix = conf.etcd["prefix"].rstrip("/") + "/"
    client = client_for(conf)
    key = lambda item_id: f"{prefix}{kind}/{item_id}"  # noqa: E731
    try:
        if args.action in ("validate", "put"):
            items = read_items(args.source, kind)
            masked = [problem for item_id, item in items
                      for problem in masks_in(item, f"{kind}/{item_id}")]
            if masked:
                return _fail(masked)
            if kind == "consumers":
                given = items
                items = [(item_id, seal(item, item_id)) for item_id, item in items]
            table, note = current_table(conf, client, prefix, conf_path=args.conf)
            problems, notes = check(kind, items, table)
            if kind == "consumers":
                problems += shared_secrets(given, table.consumers)
            for line in ([note] if note else []) + notes:
                print(f"note: {line}")
            if kind in ("routes", "upstreams"):
                from .settings import plugin_warnings
                for item_id, item in items:
                    where = f"{kind[:-1]} {item_id}: plugins"
                    for line in plugin_warnings(where, isinstance(item, dict) and
                                                item.get("plugins")):
                        print(f"warning: {line}")
            if problems:
                return _fail(problems)
            if args.action == "validate":
                print(f"ok: {len(items)} {kind} valid")
                return 0
            # One transaction: a list is applied whole or not at all, and the gateway sees
            # it in one watch event (never half a release).
            revision = client.txn_put([(key(item_id), json.dumps(item, sort_keys=True))
                                       for item_id, item in items])
            for item_id, _ in items:
                print(f"put {key(item_id)} (revision {revision})")
            from .sync.shm import STATUS
            mismatch = other_prefix(conf, args.conf, read_status_file(
                f"{conf.etcd['runtime_dir']}/{STATUS}") or {})
            if mismatch:
                print(f"warning: {mismatch}")
            return 0
        if args.action == "get":
            value = client.get(key(args.id))
            if value is None:
                return _fail([f"{key(args.id)}: not found"])
            try:
                print(shown_item(json.loads(value), args.show_secrets))
            except (ValueError, RecursionError) as exc:
                # a value put by hand (etcdctl): the gateway rejects it too; show it as stored
                why = "nested too deep" if isinstance(exc, RecursionError) else exc
                note = withheld(value)
                shown = note if note and not args.show_secrets else \
                    repr(value.decode(errors="replace")[:200])
                return _fail([f"{key(args.id)}: stored value is not valid JSON ({why}): "
                              f"{shown}"])
            return 0
        if args.action == "delete":
            if kind == "upstreams" and not args.force:
                users = routes_using(conf, client, prefix, args.id)
                if users:
                    return _fail([f"{key(args.id)}: still used by route(s) "
                                  f"{', '.join(users)}; they would answer 503 until it is "
                                  f"back. Change them first, or delete with --force"])
            deleted = client.delete(key(args.id))
            if not deleted:
                return _fail([f"{key(args.id)}: not found"])
            print(f"deleted {key(args.id)}")
            return 0
        if args.action == "list":
            _, everything = client.range_prefix(prefix)
            kvs = [kv for kv in everything if kv[0].startswith(f"{prefix}{kind}/")]
            table, _ = current_table(conf, client, prefix, keep_rejected=True)
            verdicts = gateway_verdicts(conf, args.conf, everything)
            from .sync.shm import unread_reason
            from .sync.watcher import SHOWN_KEY, shown as as_status_shows
            for item_key, value, rev in kvs:
                item_id = item_key[len(prefix) + len(kind) + 1:]
                unread = unread_reason(f"{kind}/{item_id}")
                reason = unread or (table.rejected.get(f"{kind}/{item_id}") if verdicts is None
                                    else verdicts.get(as_status_shows(f"{kind}/{item_id}",
                                                                   SHOWN_KEY)))
                mark = "IGNORED" if unread else \
                    "REJECTED" if reason and WAITING not in reason else \
                    "waiting" if reason else "ok"
                shown = public_view(value) if kind == "consumers" else stored_view(value)
                print(f"{printable(item_id)}\trevision {rev}\t{mark}\t{printable(shown)}")
                if reason:
                    print(f"\t{printable(reason)}")
            return 0
        if args.action == "status":
            return status(conf, args.conf)
    except EtcdError as exc:
        return _fail([str(exc)])
    except ConfigError as exc:
        return _fail(exc.problems)
    return 2


def seal(item, consumer_id="?"):
    """A consumer as stored: credentials given in clear (key_auth's ``key``, basic_auth's
    ``password``) hashed by their plugin's ``seal_credential``, so etcd never holds them.
    A clear credential that cannot be hashed is a ConfigError that never quotes it."""
    from .plugins import load_registry
    registry = load_registry()
    credentials = item.get("credentials") if isinstance(item, dict) else None
    if not isinstance(credentials, dict):
        return item
    sealed = {}
    for name, cred in credentials.items():
        sealer = getattr(registry.get(name), "seal_credential", None)
        try:
            sealed[name] = sealer(cred) if sealer else cred
        except UnicodeEncodeError:      # JSON's "\ud800": text that has no UTF-8
            raise ConfigError(f"consumer {consumer_id}: credentials.{name}: holds a lone "
                              f"surrogate (\\ud800-\\udfff), which no UTF-8 text does") \
                from None
        except ValueError as exc:       # bcrypt's: a password longer than 72 bytes
            raise ConfigError(f"consumer {consumer_id}: credentials.{name}: {exc}") from None
    return {**item, "credentials": sealed}


def shared_secrets(given, directory):
    """Problems for a secret given in clear (``given``: [(consumer id, item as given)]) that
    another consumer holds too, in etcd, in the conf file or in this put: the gateway would
    refuse it on use, as no one's (key_auth). ``directory`` holds the put's consumers already
    (``check``), so one scan finds both kinds of clash."""
    problems, seen = [], set()
    for consumer_id, item in given:
        credentials = item.get("credentials") if isinstance(item, dict) else None
        if not isinstance(credentials, dict):
            continue                        # check() refused it
        for name, clear in credentials.items():
            same = getattr(directory.registry.get(name), "same_secret", None)
            if same is None or directory.get(consumer_id) is None:     # refused by check()
                continue
            for _, other in directory.credentials(name):
                pair = (name, frozenset((consumer_id, other.id)))
                if other.id != consumer_id and pair not in seen and \
                        same(clear, other.credentials[name]):
                    seen.add(pair)
                    problems.append(f"consumer {consumer_id}: credentials.{name}: the same "
                                    f"secret is consumer {other.id}'s (the gateway would "
                                    f"refuse it for both)")
    return problems


def shown_item(item, show_secrets=False):
    """What ``get`` prints of a stored item: indented JSON, its secrets masked as ``list``
    masks them (a jwt secret, a consumer's credentials, a password in a URL: the output is
    pasted into tickets and chats), unless ``--show-secrets``. A note on stderr says so, and
    ``put`` refuses a masked value given back (masks_in)."""
    from .redact import redact
    shown = item if show_secrets else redact(item)
    if shown != item:
        print("note: secrets are shown as ***; `get --show-secrets` prints them as stored",
              file=sys.stderr)
    return json.dumps(shown, indent=2, sort_keys=True)


# What stands in for each "***" while redact is asked whether it would mask it there: text
# no rule masks for what it is (redact masks by the name a value is under, or by its place
# in a URL)
MASK_PROBE = "gwserver-mask-probe"


def masks_in(item, where):
    """Problems for every place of ``item`` that holds the mask where ``get`` prints it in
    place of a secret: put back as it was shown, a route's jwt would verify tokens with the
    secret "***", its headers plugin send "Authorization: ***", a redirect send its
    ``?token=***``. Where redact masks nothing, "***" is a value like any other (a rewrite's
    ``Server: ***``, a fault's body): refused wherever it stood, legitimate configs were. A
    loop, not a recursion: a document nested a few hundred levels deep killed the CLI."""
    from .redact import MASK
    problems, todo = [], [(item, None, "")]     # (value, the name redact reads it under, path)
    while todo:
        value, name, path = todo.pop()
        if isinstance(value, dict):
            todo.extend((v, str(k), f"{path}.{k}" if path else str(k))
                        for k, v in reversed(value.items()))
        elif isinstance(value, list):
            todo.extend(_items_as_redacted(value, name, path)[::-1])
        elif isinstance(value, str) and MASK in value and _mask_given_back(value, name):
            problems.append(f"{where}: {path} holds {MASK}, the mask `get` prints in place "
                            f"of a secret: give the secret itself (`get --show-secrets` "
                            f"prints it)")
    return problems


def _mask_given_back(value, name):
    """Does ``value`` (under ``name``) hold the mask where redact masks a secret, and no
    secret of its own there (redact leaves it as it is)? A secret that holds "***" among
    other characters (a password "pa***word") is one, not a mask."""
    from .redact import MASK, redact
    return redact(value, name) == value and \
        redact(value.replace(MASK, MASK_PROBE), name).count(MASK_PROBE) < value.count(MASK)


def _items_as_redacted(items, name, path):
    """A list's items with the name redact reads each under: a list of (header, value)
    pairs has each value under its header's name, other lists their own name."""
    from .redact import is_pair, redact
    if items and all(is_pair(pair) for pair in items):
        return [part for i, (header, v) in enumerate(items)
                for part in ((header, None, f"{path}[{i}][0]"),
                             (v, redact(header), f"{path}[{i}][1]"))]
    return [(v, name, f"{path}[{i}]") for i, v in enumerate(items)]


def stored_view(raw):
    """What ``routes|upstreams list`` shows of a stored value: its start, with secrets
    masked as `check --dump` and /admin/config mask them (a jwt secret, an Authorization
    header a headers plugin sets, a password in a URL): a listing is pasted into tickets."""
    from .redact import redact
    try:
        shown = json.dumps(redact(json.loads(raw)), sort_keys=True)
    except (ValueError, RecursionError):      # rejected by the gateway too: as stored
        shown = withheld(raw) or raw.decode(errors="replace")
    return shown[:120]


def withheld(raw):
    """What ``get`` (without ``--show-secrets``) and ``list`` show in place of a stored value
    that is not JSON (put by hand) when it names a secret (a name redact masks the value of,
    a URL's user part); None: it is shown as stored. etcdctl's ``{'jwt': {'secret':
    '...'}}`` was printed whole, secret and all, in the error pasted into the ticket."""
    from .redact import SECRET_HEADER, SECRET_KEYS, mask_userinfo
    text = raw.decode(errors="replace")
    if not (SECRET_HEADER.search(text) or mask_userinfo(text) != text or
            any(name in text.lower() for name in SECRET_KEYS)):
        return None
    return f"{len(raw)} bytes, not shown: they name a secret (`get --show-secrets` prints them)"


def public_view(raw):
    """What ``consumers list`` shows of a stored consumer: no credential values."""
    try:
        spec = json.loads(raw)
        return json.dumps({"groups": spec.get("groups", []),
                           "credentials": sorted(spec.get("credentials", {})),
                           "plugins": sorted(spec.get("plugins", {}))}, sort_keys=True)
    except (ValueError, AttributeError, TypeError, RecursionError):
        return "(not a JSON object)"


def cmd_hash(args):
    """Read a key or password on stdin (one line), print what a consumer stores for it."""
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        return _fail(["nothing on stdin: give the key or password as one line"])
    if args.action == "hash-key":
        from .plugins.key_auth import hash_key
        print(hash_key(secret))
    else:
        from .plugins.basic_auth import hash_password
        try:
            print(hash_password(secret, args.rounds))
        except ValueError as exc:       # over bcrypt's 72 bytes
            return _fail([str(exc)])
    return 0


def other_prefix(conf, conf_path, state):
    """Why the gateway that writes ``state`` serves none of what this conf file's commands
    write (it syncs another prefix: a CLI's copy of the conf edited apart), or None."""
    from .sync.shm import etcd_prefix
    synced, ours = state.get("prefix"), etcd_prefix(conf)
    if not isinstance(synced, str) or synced == ours:
        return None
    return (f"the gateway in {conf.etcd['runtime_dir']} syncs etcd prefix {printable(synced)}, "
            f"and {conf_path} names {printable(ours)}: what this conf file's commands write "
            f"is not served by it")


def gateway_verdicts(conf, conf_path, kvs):
    """The running gateway's rejected items ({'KIND/ID': reason} as status.json has them, a
    long key shortened) once it has read every item of ``kvs``; None when its state is not
    there to trust (none, damaged, stale, another prefix's, behind etcd). Judged afresh, an
    upstream the gateway refused as unfit for a route that uses it (docs/etcd.md) went in
    first and the route was marked REJECTED "its paths answer 503", while the gateway served
    the route and refused the upstream: its verdicts depend on the order items came in,
    which etcd does not keep."""
    import os
    from .sync.shm import STATUS
    path = f"{conf.etcd['runtime_dir']}/{STATUS}"
    state = read_status_file(path)
    if state is None or status_damage(state) or other_prefix(conf, conf_path, state):
        return None
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return None
    seen = state.get("revision")
    if not state["connected"] or stale_reason(state.get("pid"), age, conf.etcd) or \
            not isinstance(seen, int) or any(rev > seen for _, _, rev in kvs):
        return None
    return state["rejected"]


def status(conf, conf_path):
    """Print the sync state; exit 0 if it is live, connected and nothing is rejected, 1 if
    the state is stale (no sync process of this gateway wrote it, or not lately), etcd is
    unreachable, items are rejected, keys of its kinds are not read (an empty id, an id with
    a "/") or the gateway syncs another prefix than this conf file's, 2 if there is no state
    at all."""
    import os
    from .sync.shm import STATUS, meant_for_gateway, worker_board
    runtime_dir = conf.etcd["runtime_dir"]
    path = f"{runtime_dir}/{STATUS}"
    state = read_status_file(path)
    if state is None:
        return _fail([f"no status in {runtime_dir}: is the gateway running with this conf?"])
    damage = status_damage(state)
    if damage:
        return _fail([f"{path}: not a status the sync process writes ({damage}): damaged, "
                      f"or written by something else; it is written again within a minute "
                      f"by a running gateway's config-sync"])
    problems = []
    mismatch = other_prefix(conf, conf_path, state)
    if mismatch:
        # the state of a gateway that never reads what `put` with this conf file writes
        problems.append(mismatch)
    stale = stale_reason(state.get("pid"), time.time() - os.stat(path).st_mtime, conf.etcd)
    if stale:
        problems.append(f"STALE: {stale}; what follows is the last state written, not now")
    board = worker_board(runtime_dir)
    for pid in [pid for pid, entry in board.items() if not board_entry_ok(entry)]:
        problems.append(f"worker {pid}: its entry in {runtime_dir}/workers is damaged")
        del board[pid]
    age = time.time() - state["last_sync"] if state.get("last_sync") else None
    revision = printable(state["revision"]) if state.get("revision") is not None else "-"
    link = f"connected to {printable(state['endpoint'])}" if state["connected"] else \
        "NOT CONNECTED"
    print(f"generation {state['generation']}  etcd revision {revision}  {link}"
          + (f"  last sync {age:.1f}s ago" if age is not None else ""))
    if not state["connected"] and not stale:
        # Generation 0: nothing was ever published (no snapshot, etcd never answered), so
        # there is no last good table; the workers serve the conf file's routes alone.
        error = state.get("error")
        why = f" ({printable(error)})" if isinstance(error, str) else ""
        if state.get("auth_failed") is True:    # etcd answers: it refuses the credentials
            problems.append(f"etcd refuses the gateway's credentials{why}: it serves its last "
                            f"good table" if state["generation"] else
                            f"etcd refuses the gateway's credentials{why} and there was no "
                            f"snapshot: it serves the conf file's static routes only, and "
                            f"/-/ready answers 503 until etcd takes them")
        elif state.get("password_unreadable") is True:  # etcd not asked: our own file
            problems.append(f"the gateway cannot read its etcd password{why}: it serves its "
                            f"last good table" if state["generation"] else
                            f"the gateway cannot read its etcd password{why} and there was "
                            f"no snapshot: it serves the conf file's static routes only, and "
                            f"/-/ready answers 503 until it can")
        elif state.get("refused") is True:      # etcd answers: with an error of its own
            problems.append(f"etcd refuses the gateway's calls{why}: it serves its last good "
                            f"table" if state["generation"] else
                            f"etcd refuses the gateway's calls{why} and there was no "
                            f"snapshot: it serves the conf file's static routes only, and "
                            f"/-/ready answers 503 until etcd takes them")
        else:
            problems.append(f"etcd is unreachable from the gateway{why}: it serves its last "
                            f"good table" if state["generation"] else
                            f"etcd has not answered since the gateway started{why} and there "
                            f"was no snapshot: it serves the conf file's static routes only, "
                            f"and /-/ready answers 503 until etcd answers")
    print(f"{state['routes']} routes, {state['upstreams']} upstreams from etcd")
    for pid, entry in sorted(board.items()):
        behind = "" if entry["generation"] == state["generation"] else "  (behind)"
        refused = entry.get("refused") or 0
        print(f"worker {pid}: generation {entry['generation']}, {entry['routes']} routes{behind}"
              + (f", {refused} published item(s) not applied (see its log)" if refused else ""))
        if refused:
            problems.append(f"worker {pid} serves {refused} item(s) fewer than published")
        if behind and not stale:
            late = published_age(runtime_dir, state["generation"])
            if late is not None and late > BEHIND_GRACE:
                problems.append(f"worker {pid} is at generation {entry['generation']}, "
                                f"{late:.0f}s after generation {state['generation']} was "
                                f"published (workers apply one within a second)")
    if not board and state["generation"] and not stale:
        # Every worker says on the board which table it serves once it applies one, at its
        # start too: none there means no worker runs, or none can write there.
        print("no worker has said which table it serves")
        late = published_age(runtime_dir, state["generation"])
        if late is not None and late > BEHIND_GRACE:
            problems.append(f"no worker has said which table it serves, {late:.0f}s after "
                            f"generation {state['generation']} was published: are the "
                            f"workers running, and can they write in {runtime_dir}/workers? "
                            f"(the gateway's log says)")
    rejected = state.get("rejected", {})
    refused = [k for k, reason in rejected.items() if WAITING not in reason]
    print(f"{len(refused)} rejected item(s)"
          + (f", {len(rejected) - len(refused)} waiting for their upstream"
             if len(rejected) > len(refused) else ""))
    for item_key, reason in rejected.items():
        print(f"  {printable(item_key)}: {printable(reason)}")
    if refused:
        problems.append(f"{len(refused)} item(s) rejected: "
                        f"{', '.join(map(printable, refused))}")
    unread, total = state.get("unread") or {}, state.get("unread_total") or 0
    if total:
        # a key misspelt (route/ for routes/), an id holding "/": no item, nothing served
        prefix = printable(state.get("prefix") or "")
        print(f"{total} key(s) under {prefix} not read by the gateway")
        for key, reason in unread.items():
            print(f"  {printable(key)}: {printable(reason)}")
        if total > len(unread):
            print(f"  ... and {total - len(unread)} more")
        # A problem where the key is of a kind the gateway reads (an empty id, an id with
        # a "/"): an item meant for it. One of another kind may be a team's own key under
        # the prefix, as docs/etcd.md long allowed: listed above, and no failed check.
        mistaken = [key for key in unread if meant_for_gateway(key.partition("/")[0])]
        if mistaken:
            problems.append(f"{len(mistaken)} key(s) of the gateway's kinds under {prefix} "
                            f"not read by it: {', '.join(map(printable, mistaken))}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


STATUS_FIELDS = {"generation": int, "connected": bool, "routes": int, "upstreams": int,
                 "rejected": dict}


def read_status_file(path):
    """The sync status at ``path`` (a dict), or None: missing, not a regular file (a FIFO
    would block the open), over 16 MiB, or not JSON."""
    from .files import read_regular
    try:
        data = read_regular(path, 16 << 20)
        state = json.loads(data) if len(data) <= 16 << 20 else None
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def status_damage(state):
    """What makes ``state`` no status that ``status`` can show (it raised a KeyError or a
    TypeError out of the command), or None."""
    for name, kind in STATUS_FIELDS.items():
        if not isinstance(state.get(name), kind):
            return f"{name} is not {kind.__name__}"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in state["rejected"].items()):
        return "rejected is not a table of reasons"
    if state.get("connected") and not isinstance(state.get("endpoint"), str):
        return "endpoint is not str"
    if not isinstance(state.get("last_sync") or 0, (int, float)):
        return "last_sync is not a time"
    unread = state.get("unread") or {}      # (an earlier version writes none)
    if not isinstance(unread, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in unread.items()) or \
            not isinstance(state.get("unread_total") or 0, int):
        return "unread is not a table of reasons"
    return None


def board_entry_ok(entry):
    return isinstance(entry, dict) and isinstance(entry.get("generation"), int) and \
        isinstance(entry.get("routes"), int) and isinstance(entry.get("refused") or 0, int)


BEHIND_GRACE = 5.0       # seconds a worker may take to apply a published generation


def published_age(runtime_dir, generation):
    """Seconds since ``generation`` was published (its change file, or the whole table)."""
    import os
    from .sync.shm import CHANGES, TABLE
    for path in (f"{runtime_dir}/{CHANGES}/{generation}.json", f"{runtime_dir}/{TABLE}"):
        try:
            return time.time() - os.stat(path).st_mtime
        except OSError:
            continue
    return None


def stale_reason(pid, age, etcd):
    """Why a status file does not describe a running gateway now (None if it does): its
    writer, the sync process, is gone or is another program (a pid reused after a reboot),
    or it has not written for longer than it ever waits between writes (every watch's idle
    timeout while etcd answers, every backoff while it does not)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ")     # "gwserver: config-sync" (proctitle)
    except (OSError, TypeError, ValueError):
        return f"written by pid {pid}, which is not running (gateway stopped, or another run)"
    if b"config-sync" not in title and not (b"gwserver" in title and b"sync" in title):
        return f"written by pid {pid}, which is now another program, not gwserver's sync"
    limit = 2 * etcd["watch_idle_timeout"] + etcd["backoff_max"] + 2 * etcd["timeout"]
    if age > limit:
        return f"last written {age:.0f}s ago (it is rewritten at least every {limit:.0f}s)"
    return None


def _fail(problems):
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


def add_parsers(sub):
    import argparse
    from .cli import conf_option
    for kind in ("routes", "upstreams", "consumers"):
        parser = sub.add_parser(kind, help=f"{kind} in etcd")
        conf_option(parser)
        actions = parser.add_subparsers(dest="action", required=True)

        def action(name, **kw):
            p = actions.add_parser(name, **kw)
            conf_option(p, default=argparse.SUPPRESS)
            return p
        for name in ("put", "validate"):
            action(name, help=f"{name} {kind} from a JSON file (- = stdin)").add_argument(
                "source")
        singular = kind[:-1]
        get = action("get", help=f"print one {singular} as stored")
        get.add_argument("id")
        get.add_argument("--show-secrets", action="store_true",
                         help="print secrets as stored (masked as *** by default)")
        delete = action("delete", help=f"delete one {singular}")
        delete.add_argument("id")
        if kind == "upstreams":
            delete.add_argument("--force", action="store_true",
                                help="delete even if routes still use it")
        action("list", help=f"every one of the {kind} in etcd: id, revision, state, value")
        if kind == "routes":
            action("status", help="sync state, worker generations, rejected items")
        if kind == "consumers":
            action("hash-key", help="print the key_hash of a key read on stdin")
            action("hash-password", help="print the bcrypt hash of a password read on "
                   "stdin").add_argument("--rounds", type=int, default=12)
        parser.set_defaults(func=lambda args, kind=kind: cmd_hash(args) if
                            args.action.startswith("hash-") else main(kind, args))
    register = sub.add_parser("register", help="register a service instance in etcd with a "
                              "lease and keep it alive (until SIGTERM)")
    conf_option(register)
    register.add_argument("--service", required=True, help="service name")
    register.add_argument("--url", required=True, help="http://host:port of this instance")
    register.add_argument("--instance", help="instance id (default: hostname-port)")
    register.add_argument("--weight", type=int, default=1)
    register.add_argument("--ttl", type=int, default=10, help="lease seconds")
    register.set_defaults(func=lambda args: _report_errors(cmd_register, args))


def _report_errors(command, args):
    try:
        return command(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gwserver register: {problem}", file=sys.stderr)
        return 2


def check_service_name(service):
    """A name an upstream's `service` can follow: the gateway reads PREFIX/services/NAME/
    INSTANCE, so "orders/eu" was registered where no gateway looks."""
    from .core.routes import UPSTREAM
    from .core.schema import Invalid
    try:
        UPSTREAM.fields["service"].check(service)
    except Invalid as exc:
        raise ConfigError(f"--service: {exc}") from None


MAX_LEASE_TTL = 9_000_000_000      # etcd's MaxLeaseTTL (seconds)


def check_ttl(ttl):
    """A lease etcd grants as asked: 0 or -3 was registered and printed as `ttl 0s` (etcd
    gave its own minimum); more than etcd's maximum was `retrying` for ever, ttl/3 apart."""
    if not 1 <= ttl <= MAX_LEASE_TTL:
        raise ConfigError(f"--ttl: must be 1 to {MAX_LEASE_TTL:,} seconds, got {ttl}")


def instance_id(args):
    """--instance, or HOSTNAME-PORT with the port the URL names or implies. Taken from the
    URL's text after its last ':', "http://10.0.0.7:8080/" made "host-8080/" and
    "http://10.0.0.7" "host-//10.0.0.7": keys with a '/', which the gateway ignores."""
    import socket
    from .core.routes import make_target
    from .core.schema import show
    if args.instance is None:
        port = make_target({"url": args.url, "weight": args.weight}).port
        return f"{socket.gethostname()}-{port}"
    if not args.instance:
        raise ConfigError("--instance: must not be empty")
    if "/" in args.instance:
        raise ConfigError('--instance: must hold no "/" (the gateway reads '
                          f"PREFIX/services/NAME/INSTANCE), got {show(args.instance)}")
    return args.instance


def take_key(client, key, value, ttl, same_value=True):
    """(a new lease holding ``key`` = ``value``, None), or (None, what the key holds) when
    another registration holds it. Put over it, a second instance of one host and port
    took the first's key, and its revocation (stopped) deleted the key the first still
    kept alive: registered, and never served again. The lease is the registration's once
    the put is in: kept when etcd refused the put, the next turns only kept it alive."""
    from .sync.etcd import EtcdError
    lease = client.lease_grant(ttl)
    try:
        held = client.claim(key, value, lease, same_value)
    except EtcdError:
        drop_lease(client, lease)           # (a long --ttl's leases would pile up)
        raise
    if held is not None:
        drop_lease(client, lease)
        return None, held
    return lease, None


def held_url(held):
    """The URL of another registration's value, for the message that names it: whoever put
    it wrote it (etcdctl put by hand, another team's tool), escape sequences too."""
    from .redact import mask_userinfo
    try:
        spec = json.loads(held)
        return printable(mask_userinfo(str(spec if isinstance(spec, str) else spec["url"])))
    except (ValueError, TypeError, KeyError):
        return f"{len(held)} bytes, not an instance's value"


def displaced(client, key, value, lease):
    """The key is no longer under our lease: deleted, or put again by hand without a lease
    (`etcdctl put`: nothing ever deletes it) with our value (put again at once: None); put
    over by another registration of the same URL (what it holds: that one is alive, and its
    stop deletes the key; it is taken again once gone), or by hand with another value (what
    it holds: waited for, said so). Unnoticed, this one kept an empty lease alive,
    `registered`, and the other's stop left the instance unregistered while it ran."""
    drop_lease(client, lease)
    held, by_lease = client.value_and_lease(key)
    if held is None:
        print(f"{key} was deleted; registering again", flush=True)
        return None
    if not by_lease and held == value:
        print(f"{key} was put again without a lease (etcdctl put?); registering again",
              flush=True)
        return None
    if not by_lease:
        # said as "another registration of this URL", it was waited for forever
        print(f"{key} was put over without a lease ({held_url(held)}; etcdctl put?): "
              f"nothing deletes it but etcdctl del. Waiting for the key to go",
              file=sys.stderr, flush=True)
        return held
    print(f"{key} was taken over by another registration ({held_url(held)}): another "
          f"`gwserver register` of this host and port? Each needs its own --instance. "
          f"Waiting for the key to go", file=sys.stderr, flush=True)
    return held


def drop_lease(client, lease):
    """Revoke a lease no key was put under; if etcd does not answer, it runs out."""
    from .sync.etcd import EtcdError
    try:
        client.lease_revoke(lease)
    except EtcdError:
        pass


def cmd_register(args):
    """Register one service instance under PREFIX/services/NAME/INSTANCE with a lease, and keep
    the lease alive until stopped (SIGTERM/SIGINT revoke it: the instance leaves at once).
    If the process dies, etcd drops the key when the lease's TTL runs out."""
    import signal
    from .core.routes import TARGET
    from .sync.etcd import EtcdError
    from .settings import load_conf
    conf = load_conf(args.conf)
    if conf.etcd is None:
        raise ConfigError(f"{args.conf}: register needs an [etcd] section")
    TARGET.validate({"url": args.url, "weight": args.weight}, "--url/--weight")
    check_service_name(args.service)
    check_ttl(args.ttl)
    instance = instance_id(args)
    key = f"{conf.etcd['prefix'].rstrip('/')}/services/{args.service}/{instance}"
    value = json.dumps({"url": args.url, "weight": args.weight}).encode()
    client = client_for(conf)
    state = {"lease": None, "running": True}

    def stop(*_):
        state["running"] = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while state["running"]:
        try:
            if state["lease"] is None:
                state["lease"], held = take_key(client, key, value, args.ttl,
                                                not state.get("displaced"))
                if held is not None and held != state.get("held"):
                    print(f"{key} is held by another registration ({held_url(held)}): "
                          f"another `gwserver register` of this host and port? Each needs "
                          f"its own --instance. Waiting for the key to go", file=sys.stderr,
                          flush=True)
                state["held"] = held
                if state["lease"] is not None:
                    state["displaced"] = False
                    print(f"registered {key} -> {args.url} (lease {state['lease']:x}, "
                          f"ttl {args.ttl}s)", flush=True)
            elif client.lease_keepalive(state["lease"]) == 0:
                print("the lease expired (etcd unreachable for too long?); registering again",
                      flush=True)
                state["lease"] = None
                continue
            elif client.lease_of(key) != state["lease"]:
                state["held"] = displaced(client, key, value, state["lease"])  # (said)
                state["lease"], state["displaced"] = None, state["held"] is not None
                continue
        except EtcdError as exc:
            print(f"etcd: {exc}; retrying", file=sys.stderr, flush=True)
        deadline = time.monotonic() + max(0.5, args.ttl / 3)
        while state["running"] and time.monotonic() < deadline:
            time.sleep(0.1)
    if state["lease"] is not None:
        try:
            client.lease_revoke(state["lease"])
            print(f"deregistered {key}", flush=True)
        except EtcdError as exc:
            print(f"could not revoke the lease ({exc}); the key goes when its TTL runs out",
                  file=sys.stderr)
    return 0
