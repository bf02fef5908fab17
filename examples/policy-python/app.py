"""The WebAssembly glue, and the only code that sees the generated bindings: exports
`egress:policy/decider` by converting WIT types to and from `policy.py`'s own.

componentize-py generates the `wit_world` package from ../../wit at build time and
looks for a class named after the exported interface (`Decider`) in this module.

`configure` runs once per instance, before any `decide`, so the parsed policy is kept
in a module global. A `configure` that fails leaves the instance unconfigured, and
`decide` then denies with 500.
"""

from typing import Optional

import wit_world.exports
from componentize_py_types import Err
from wit_world.exports import decider as wit
from wit_world.imports import request_body, request_headers

import policy

_policy: Optional[policy.Policy] = None

_METHODS = {
    wit.Method_Get: "GET",
    wit.Method_Head: "HEAD",
    wit.Method_Post: "POST",
    wit.Method_Put: "PUT",
    wit.Method_Delete: "DELETE",
    wit.Method_Connect: "CONNECT",
    wit.Method_Options: "OPTIONS",
    wit.Method_Trace: "TRACE",
    wit.Method_Patch: "PATCH",
}


class Decider(wit_world.exports.Decider):
    def configure(self, routes: str) -> wit.Summary:
        global _policy
        _policy = None
        try:
            parsed = policy.Policy.parse(routes)
        except ValueError as error:
            # The WIT `result` error: the proxy refuses the document with this message.
            raise Err(str(error))
        _policy = parsed
        rules, secrets, rule_ids = parsed.summary()
        return wit.Summary(rules, secrets, rule_ids)

    def decide(self, req: wit.Request, headers: request_headers.Headers) -> wit.Verdict:
        if _policy is None:
            return wit.Verdict_Deny(wit.Denial(500, "policy not configured", None, [], []))
        return _to_wit(_policy.decide(_from_wit(req), headers.get))

    def decide_body(
        self, req: wit.Request, headers: request_headers.Headers, body: request_body.Body
    ) -> wit.Verdict:
        # This policy never answers need-body, so the proxy never calls this; if it
        # did, the head decision stands.
        return self.decide(req, headers)


def _from_wit(req: wit.Request) -> policy.Request:
    if isinstance(req.method, wit.Method_Other):
        method = req.method.value
    else:
        method = _METHODS[type(req.method)]
    scheme = "https" if req.scheme == wit.Scheme.HTTPS else "http"
    return policy.Request(scheme, method, req.host, req.port, req.path)


def _to_wit(verdict: policy.Verdict) -> wit.Verdict:
    if isinstance(verdict, policy.Allow):
        return wit.Verdict_Allow(wit.Allowance(verdict.rule, []))
    if isinstance(verdict, policy.Deny):
        return wit.Verdict_Deny(wit.Denial(verdict.status, verdict.reason, verdict.rule, [], []))
    headers = [wit.InjectedHeader(name, [_part_to_wit(part) for part in parts]) for name, parts in verdict.headers]
    return wit.Verdict_Inject(wit.Injection(headers, verdict.rule, []))


def _part_to_wit(part) -> wit.Part:
    if isinstance(part, policy.Secret):
        return wit.Part_Secret(part.name)
    return wit.Part_Literal(part.text)
