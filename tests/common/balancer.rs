//! nginx as an HTTP load balancer (round robin) in front of outbox
//! instances, configured as docs/OPERATING.md shows.

/// A running balancer on `port`, passing requests to `upstreams`.
pub struct Balancer {
    child: std::process::Child,
    pub port: u16,
}

impl Balancer {
    pub fn start(dir: &std::path::Path, upstreams: &[u16], port: u16) -> Balancer {
        let servers: String = upstreams.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n")).collect();
        let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
        let conf = format!(
            "{user}daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log info;\nevents {{}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             upstream outbox {{\n{servers}    keepalive 32;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n    location / {{\n\
             proxy_pass http://outbox;\n      proxy_http_version 1.1;\n      proxy_request_buffering off;\n\
             proxy_set_header Host $http_host;\n      proxy_set_header Connection \"\";\n      proxy_next_upstream error timeout;\n    }}\n  }}\n}}\n",
            dir = dir.display(),
        );
        let cf = dir.join("nginx.conf");
        std::fs::write(&cf, conf).unwrap();
        let nginx = ["/usr/sbin/nginx"].iter().map(std::path::PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| super::require("nginx"));
        let child = std::process::Command::new(nginx).arg("-p").arg(dir).arg("-c").arg(&cf).spawn().unwrap();
        super::wait_for("nginx to listen", 30, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Balancer { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

