"""The PROXY protocol with the real thing on the other side: HAProxy with
send-proxy-v2 (and send-proxy) in front of a tandem listener that requires
the header, and nginx with `listen ... proxy_protocol` behind a tandem
cluster with send_proxy. Each must see the original client's address."""

import os
import socket
import tempfile
import unittest

from harness import (ChildProcess, HttpReader, TandemTestCase, build_request, free_port,
                     make_config, read_response, require_tool, scaled, wait_until)

NO_CHECKS = '[clusters.compute.health]\nkind = "none"\n'


def get_from(ip, port, target="/"):
    """One GET to 127.0.0.1:`port` from the loopback address `ip`; returns the
    response and the client's own "ip:port"."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10),
                                    source_address=(ip, 0))
    try:
        sock.sendall(build_request("GET", target, {"Host": "interop"}))
        return read_response(HttpReader(sock), "GET"), "%s:%d" % sock.getsockname()
    finally:
        sock.close()


def wait_listening(port, what):
    def accepts():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_until(accepts, scaled(10), what + " listening")


class ServerProcess(ChildProcess):
    """HAProxy or nginx in the foreground, with its config in a temporary
    directory."""

    def __init__(self, argv_for, config, name):
        self.directory = tempfile.TemporaryDirectory(prefix="tandem-interop-")
        path = os.path.join(self.directory.name, "server.conf")
        with open(path, "w") as f:
            f.write(config.replace("@DIR@", self.directory.name))
        super().__init__(argv_for(path, self.directory.name), name=name)

    def close(self):
        if self.running():
            try:
                self.stop(scaled(10))
            except TimeoutError:
                self.kill()
        self.directory.cleanup()


class HaproxyInFrontTest(TandemTestCase):
    """client → HAProxy (send-proxy-v2 / send-proxy) → tandem (proxy_protocol)."""

    def start_haproxy(self, tandem_port, option):
        haproxy = require_tool("haproxy", "haproxy")
        port = free_port()
        config = """global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend in
    bind 127.0.0.1:%d
    default_backend tandem
backend tandem
    server t 127.0.0.1:%d %s
""" % (port, tandem_port, option)
        process = ServerProcess(lambda path, _: [haproxy, "-db", "-f", path], config, "haproxy")
        self.addCleanup(process.close)
        wait_listening(port, "haproxy")
        return port

    def test_haproxy_send_proxy_v2_and_v1_give_tandem_the_client(self):
        backend = self.start_backend()
        tandem = self.start_tandem(make_config([backend.address], extra=NO_CHECKS,
                                               listener_opts={"proxy_protocol": True}))
        for option, ip in (("send-proxy-v2", "127.0.0.7"), ("send-proxy", "127.0.0.8")):
            with self.subTest(option=option):
                port = self.start_haproxy(tandem.port, option)
                response, client = get_from(ip, port)
                self.assertEqual(response.status, 200)
                request = backend.wait(
                    lambda b: any(r.header_all("x-forwarded-for") == [ip]
                                  for r in b.requests()), scaled(5),
                    "a request forwarded for %s" % ip)
                wait_until(lambda: any(line.split()[1] == client
                                       for line in tandem.access_lines()),
                           scaled(5), "the access log naming " + client)


class NginxBehindTest(TandemTestCase):
    """client → tandem (send_proxy) → nginx (listen ... proxy_protocol)."""

    def start_nginx(self):
        nginx = require_tool("nginx", "nginx")
        port = free_port()
        config = """daemon off;
worker_processes 1;
pid @DIR@/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    server {
        listen 127.0.0.1:%d proxy_protocol;
        location / {
            return 200 "client=$proxy_protocol_addr:$proxy_protocol_port peer=$remote_addr\\n";
        }
    }
}
""" % port
        process = ServerProcess(lambda path, directory: [nginx, "-p", directory, "-c", path],
                                config, "nginx")
        self.addCleanup(process.close)
        wait_listening(port, "nginx")
        return port

    def test_nginx_reads_the_client_from_tandem_s_header(self):
        port = self.start_nginx()
        for version, ip in (("v1", "127.0.0.9"), ("v2", "127.0.0.10")):
            with self.subTest(version=version):
                tandem = self.start_tandem(make_config(
                    ["127.0.0.1:%d" % port], extra=NO_CHECKS,
                    cluster_opts={"send_proxy": version}))
                response, client = get_from(ip, tandem.port)
                self.assertEqual(response.status, 200)
                self.assertEqual(response.body.decode().split()[0], "client=" + client)
                tandem.stop()


if __name__ == "__main__":
    unittest.main()
