//! A real MQTT broker for tests: Debian's `mosquitto`, on an ephemeral loopback port,
//! persistence off (a restart loses its sessions, as a broker without persistence
//! does), and a publisher.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running mosquitto (killed on drop).
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
}

/// Where mosquitto is, if installed (`.ci/run` installs it; see the README).
pub fn mosquitto() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Broker {
    /// Start mosquitto under `dir`; None when it is not installed and `CI` is unset
    /// (the caller skips, saying so); with `CI` set a missing mosquitto fails.
    pub fn start(dir: &Path) -> Option<Broker> {
        Broker::start_with(dir, "", "")
    }

    /// [`Broker::start`] with more configuration: `top` before the first listener
    /// (e.g. `per_listener_settings true`), `more` after the plain one (another
    /// listener: TLS, a password file).
    pub fn start_with(dir: &Path, top: &str, more: &str) -> Option<Broker> {
        let Some(bin) = mosquitto() else {
            if std::env::var_os("CI").is_some() {
                panic!("mosquitto is not installed (apt-get install mosquitto; .ci/run does)");
            }
            eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
            return None;
        };
        let port = free_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{top}user root\npersistence false\nmax_queued_messages 100000\nlog_type error\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\n{more}"
            ),
        )
        .expect("writing mosquitto.conf");
        let _ = bin;
        let mut b = Broker {
            child: None,
            port,
            conf,
        };
        b.run();
        Some(b)
    }

    fn run(&mut self) {
        let bin = mosquitto().expect("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the broker (its sessions and queued messages are lost: persistence is
    /// off).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A publishing client (its connection driven on a thread).
pub struct Publisher {
    client: rumqttc::Client,
}

impl Publisher {
    pub fn connect(port: u16, id: &str) -> Publisher {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 10_000);
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if ev.is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Publisher { client }
    }

    /// Publish at QoS 1 (`qos0`: at QoS 0).
    pub fn publish(&self, topic: &str, payload: &[u8], qos0: bool) {
        let qos = if qos0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .expect("queueing a publish");
    }
}

/// A subscriber on the broker: every message on `topic` (QoS 1), as it arrives.
pub struct Subscriber {
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    _client: rumqttc::Client,
}

impl Subscriber {
    pub fn connect(port: u16, id: &str, topic: &str) -> Subscriber {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(o, 100);
        client
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .expect("queueing a subscribe");
        let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let g = got.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        g.lock().unwrap().push(p.payload.to_vec())
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Subscriber {
            got,
            _client: client,
        }
    }
}
