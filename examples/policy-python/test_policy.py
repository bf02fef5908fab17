"""The policy's decisions, tested in plain Python: `python -m unittest` (no wasm, no
proxy). `cases.yaml` checks the same things through the built component with
`egress-proxy policy test`."""

import unittest

from policy import Allow, Deny, Inject, Literal, Policy, Request, Secret

DOCUMENT = """{
    "max_upload_bytes": 1000,
    "hosts": [
        {"host": "pypi.org"},
        {"host": "api.github.com", "uploads": true, "tokens": {
            "/repos/acme/": "GH_ACME_TOKEN",
            "/repos/acme/secret-project/": "GH_SECRET_TOKEN",
            "/repos/acme-labs/": "GH_LABS_TOKEN"
        }}
    ]
}"""


def request(method, host, path, scheme="https", port=443):
    return Request(scheme, method, host, port, path)


def no_headers(name):
    return []


def content_length(value):
    return lambda name: [value] if name.lower() == "content-length" else []


def bearer(secret, rule):
    return Inject([("authorization", [Literal("Bearer "), Secret(secret)])], rule)


class DecideTest(unittest.TestCase):
    def setUp(self):
        self.policy = Policy.parse(DOCUMENT)

    def status(self, verdict):
        self.assertIsInstance(verdict, Deny)
        return verdict.status

    def test_get_and_head_to_a_listed_host_are_allowed(self):
        for method in ("GET", "HEAD"):
            verdict = self.policy.decide(request(method, "pypi.org", "/simple/"), no_headers)
            self.assertEqual(verdict, Allow("pypi.org"))

    def test_an_unlisted_host_is_denied_without_a_rule(self):
        verdict = self.policy.decide(request("GET", "evil.example", "/"), no_headers)
        self.assertEqual((verdict.status, verdict.rule), (403, None))

    def test_writes_are_denied_unless_the_host_takes_uploads(self):
        post = request("POST", "pypi.org", "/legacy/")
        self.assertEqual(self.status(self.policy.decide(post, content_length("10"))), 405)
        delete = request("DELETE", "api.github.com", "/repos/acme/widget")
        self.assertEqual(self.status(self.policy.decide(delete, no_headers)), 405)
        other = request("PROPFIND", "pypi.org", "/")
        self.assertEqual(self.status(self.policy.decide(other, no_headers)), 405)

    def test_uploads_are_bounded_by_content_length(self):
        post = request("POST", "api.github.com", "/markdown")
        self.assertEqual(self.policy.decide(post, content_length("1000")), Allow("api.github.com"))
        self.assertEqual(self.status(self.policy.decide(post, content_length("1001"))), 413)
        self.assertEqual(self.status(self.policy.decide(post, no_headers)), 411)
        for bad in ("-1", "+12", "12abc", "\u00b2"):
            self.assertEqual(self.status(self.policy.decide(post, content_length(bad))), 400, bad)
        self.assertEqual(self.status(self.policy.decide(post, lambda name: ["10", "10"])), 400)

    def test_a_large_body_is_denied_on_reads_too(self):
        get = request("GET", "pypi.org", "/")
        self.assertEqual(self.status(self.policy.decide(get, content_length("5000"))), 413)

    def test_each_path_prefix_gets_its_own_token(self):
        cases = [
            ("/repos/acme/widget", "GH_ACME_TOKEN", "api.github.com/repos/acme/"),
            ("/repos/acme-labs/x?y=1", "GH_LABS_TOKEN", "api.github.com/repos/acme-labs/"),
            # The longest prefix wins.
            (
                "/repos/acme/secret-project/issues",
                "GH_SECRET_TOKEN",
                "api.github.com/repos/acme/secret-project/",
            ),
        ]
        for path, secret, rule in cases:
            verdict = self.policy.decide(request("GET", "api.github.com", path), no_headers)
            self.assertEqual(verdict, bearer(secret, rule), path)

    def test_a_path_outside_every_prefix_gets_no_token(self):
        for path in ("/zen", "/repos/acme", "/repos/acme-evil/x", "/repos/other?/repos/acme/"):
            verdict = self.policy.decide(request("GET", "api.github.com", path), no_headers)
            self.assertEqual(verdict, Allow("api.github.com"), path)

    def test_tokens_are_never_sent_over_plain_http(self):
        plain = request("GET", "api.github.com", "/repos/acme/widget", scheme="http", port=80)
        self.assertEqual(self.status(self.policy.decide(plain, no_headers)), 403)
        plain.path = "/zen"
        self.assertEqual(self.policy.decide(plain, no_headers), Allow("api.github.com"))

    def test_tunnels_are_decided_on_host_and_port(self):
        connect = request("CONNECT", "api.github.com", "")
        self.assertEqual(self.policy.decide(connect, no_headers), Allow("api.github.com"))
        connect.port = 22
        self.assertEqual(self.status(self.policy.decide(connect, no_headers)), 403)
        unlisted = request("CONNECT", "evil.example", "")
        self.assertEqual(self.status(self.policy.decide(unlisted, no_headers)), 403)


class ConfigureTest(unittest.TestCase):
    def test_the_summary_declares_every_secret(self):
        rules, secrets, rule_ids = Policy.parse(DOCUMENT).summary()
        self.assertIn("pypi.org", rule_ids)
        self.assertEqual(rules, 2)
        self.assertEqual(secrets, ["GH_ACME_TOKEN", "GH_LABS_TOKEN", "GH_SECRET_TOKEN"])

    def test_bad_documents_are_rejected_with_a_reason(self):
        cases = [
            ("", "invalid policy document"),
            ('{"hosts": [{"host": "a.example", "upload": true}]}', "unknown field `upload`"),
            ('{"max_upload_bytes": -1, "hosts": []}', "invalid policy document"),
            ('{"hosts": [{"host": "A.example"}]}', "lower case"),
            ('{"hosts": [{"host": "a.example"}, {"host": "a.example"}]}', "listed twice"),
            ('{"hosts": [{"host": "a.example", "tokens": {"/repos/acme": "T"}}]}', "must start and end with `/`"),
            ('{"hosts": [{"host": "a.example", "tokens": {"/x/": "GH-PAT"}}]}', "secret name `GH-PAT`"),
        ]
        for document, expected in cases:
            with self.assertRaises(ValueError, msg=document) as raised:
                Policy.parse(document)
            self.assertIn(expected, str(raised.exception), document)

    def test_an_empty_host_list_denies_everything(self):
        policy = Policy.parse('{"hosts": []}')
        self.assertEqual(policy.decide(request("GET", "pypi.org", "/"), no_headers).status, 403)


if __name__ == "__main__":
    unittest.main()
