"""A self-contained HTML page rendered from the OpenAPI document (no CDN, no JavaScript needed)."""

from __future__ import annotations

import html
import json
from typing import Any

CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#24344d;color:#fff;padding:1.2em 2em}header h1{margin:0;font-size:1.5em}
main{display:flex}nav{width:18em;padding:1em;border-right:1px solid #dde;position:sticky;top:0;height:100vh;
overflow:auto;font-size:.9em}nav a{display:block;color:#24344d;text-decoration:none;padding:1px 0}
section{flex:1;padding:1em 2em;max-width:70em}
.op{border:1px solid #dde;border-radius:6px;margin:1em 0;background:#fff}
.op>summary{padding:.5em .8em;cursor:pointer}.m{display:inline-block;min-width:4.5em;font-weight:bold;
text-transform:uppercase;font-family:monospace}.get{color:#1a7f37}.post{color:#0969da}.delete{color:#cf222e}
.patch{color:#9a6700}.p{font-family:monospace}.body{padding:0 1em 1em}table{border-collapse:collapse}
td,th{border:1px solid #dde;padding:2px 8px;text-align:left;font-size:.9em}
pre{background:#f3f5f8;padding:.6em;overflow:auto;font-size:.85em;max-height:30em}.lock{color:#888}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _schema_link(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    return f"<code>{_e(json.dumps(schema))}</code>"


def render(doc: dict[str, Any]) -> str:
    info = doc["info"]
    comps = doc.get("components", {})
    params = comps.get("parameters", {})
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op.get("tags", ["other"])[0], []).append((path, method, op))
    nav, body = [], []
    for tag, ops in by_tag.items():
        nav.append(f"<b>{_e(tag)}</b>")
        body.append(f'<h2 id="tag-{_e(tag)}">{_e(tag)}</h2>')
        for path, method, op in ops:
            anchor = f"op-{op['operationId']}"
            nav.append(f'<a href="#{_e(anchor)}"><span class="m {method}">{method}</span>{_e(path)}</a>')
            lock = "" if op.get("security") == [] else ' <span class="lock" title="API key required">&#128274;</span>'
            parts = [
                f'<details class="op" id="{_e(anchor)}"><summary><span class="m {method}">{method}</span>'
                f'<span class="p">{_e(path)}</span> &mdash; {_e(op.get("summary", ""))}{lock}</summary>'
                '<div class="body">'
            ]
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            plist = []
            for p in op.get("parameters", []):
                if "$ref" in p:
                    p = params.get(p["$ref"].rsplit("/", 1)[1], {})
                plist.append(
                    f"<tr><td><code>{_e(p.get('name'))}</code></td><td>{_e(p.get('in'))}</td>"
                    f"<td>{'yes' if p.get('required') else 'no'}</td>"
                    f"<td>{_schema_link(p.get('schema', {}))}</td>"
                    f"<td>{_e(p.get('description', ''))}</td></tr>"
                )
            if plist:
                parts.append(
                    "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th>"
                    "<th>schema</th><th>description</th></tr>" + "".join(plist) + "</table>"
                )
            rb = op.get("requestBody")
            if rb:
                items = ", ".join(
                    f"<code>{_e(t)}</code>: {_schema_link(c['schema'])}" for t, c in rb["content"].items()
                )
                parts.append(f"<h4>Request body</h4><p>{items}</p>")
            rows = []
            for code, resp in op.get("responses", {}).items():
                if "$ref" in resp:
                    rows.append(f'<tr><td>{_e(code)}</td><td>problem (<a href="#schema-Problem">Problem</a>)</td></tr>')
                    continue
                content = ", ".join(
                    f"<code>{_e(t)}</code> {_schema_link(c['schema'])}" for t, c in resp.get("content", {}).items()
                )
                rows.append(f"<tr><td>{_e(code)}</td><td>{_e(resp.get('description', ''))} {content}</td></tr>")
            parts.append("<h4>Responses</h4><table>" + "".join(rows) + "</table></div></details>")
            body.append("".join(parts))
    body.append('<h2 id="schemas">Schemas</h2>')
    nav.append('<b><a href="#schemas">Schemas</a></b>')
    for name, schema in comps.get("schemas", {}).items():
        body.append(
            f'<details class="op" id="schema-{_e(name)}"><summary><b>{_e(name)}</b> '
            f'{_e(schema.get("description", ""))[:160]}</summary><div class="body"><pre>'
            f"{_e(json.dumps(schema, indent=2))}</pre></div></details>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(info['title'])}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(info['title'])} <small>{_e(info['version'])}</small></h1>"
        f'<p>{_e(info.get("description", ""))}</p><p>Machine-readable: <a style="color:#fff" '
        'href="/openapi.json">/openapi.json</a></p></header>'
        f"<main><nav>{''.join(nav)}</nav><section>{''.join(body)}</section></main></body></html>"
    )
