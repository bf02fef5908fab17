"""The HTTPS upstream of scripts/ci-container.sh, on loopback only.

    python3 ci-container-upstream.py CERT KEY PORT_FILE LOG_FILE

Serves HTTP/1.1 over TLS on 127.0.0.1, on a port the kernel picks (written to
PORT_FILE once it listens). Every GET is answered 200 with JSON naming the path and the
Authorization header the request arrived with, and appended to LOG_FILE as one JSON
line, so the script can tell what reached the upstream and what the proxy injected.
"""

import http.server
import json
import os
import ssl
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} CERT KEY PORT_FILE LOG_FILE")
    cert, key, port_file, log_file = sys.argv[1:]
    log = open(log_file, "a", encoding="utf-8", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen = {"path": self.path, "authorization": self.headers.get("authorization")}
            log.write(json.dumps(seen) + "\n")
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            sys.stderr.write("upstream: " + (format % args) + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    tmp = port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
