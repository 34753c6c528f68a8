//! In-process micro benchmarks of the pieces of the hot path: loan + write +
//! send (with the receive that frees the slot again), path parsing and
//! route resolution, rkyv serialization in place and validated access.

use bus_core::Path;
use criterion::{black_box, Criterion};

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Order {
    id: u64,
    qty: u32,
    price: f64,
    sku: [u8; 16],
}

fn pieces(c: &mut Criterion) {
    let b = shmbus_benches::start(256);
    let sub = b.bus.subscribe("micro").expect("subscribe");
    let mut p = b.bus.publisher().create().expect("publisher");
    let order = Order { id: 7, qty: 3, price: 9.5, sku: *b"ABCDEFGHIJKLMNOP" };

    c.bench_function("send_recv_same_thread/rkyv_40B", |bench| {
        bench.iter(|| {
            p.send("micro://orders/7", &order).expect("send");
            let m = sub.try_recv().expect("recv").expect("a message");
            black_box(m.body::<Order>().expect("body").qty);
        })
    });
    c.bench_function("send_recv_same_thread/raw_64B", |bench| {
        let body = [1u8; 64];
        bench.iter(|| {
            p.send_bytes("micro://raw", &body).expect("send");
            black_box(sub.try_recv().expect("recv").expect("a message").body_bytes().expect("body").len());
        })
    });
    let mut router = bus_client::Router::new("bench").expect("valid");
    for i in 0..50 {
        router = router.route(&format!("static/path{i}/list"), |_| Ok(())).expect("route");
        router = router.route(&format!("items{i}/{{id}}/detail"), |_| Ok(())).expect("route");
    }
    c.bench_function("route_match_100_routes/parameter", |bench| {
        bench.iter(|| black_box(router.at(black_box("items37/12345/detail")).map(|(_, p)| p.len())))
    });
    c.bench_function("route_match_100_routes/static", |bench| {
        bench.iter(|| black_box(router.at(black_box("static/path37/list")).is_some()))
    });
    c.bench_function("path_parse", |bench| {
        bench.iter(|| black_box(Path::parse(black_box("api://users/123")).expect("valid").route().len()))
    });
    let mut buf = vec![0u8; 256];
    c.bench_function("rkyv_serialize_in_place/40B", |bench| {
        bench.iter(|| {
            let w = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
                black_box(&order),
                rkyv::ser::writer::Buffer::from(&mut buf[..]),
            )
            .expect("fits");
            black_box(w.len())
        })
    });
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&order).expect("serialize");
    c.bench_function("rkyv_access_validated/40B", |bench| {
        bench.iter(|| {
            black_box(rkyv::access::<ArchivedOrder, rkyv::rancor::Error>(black_box(&bytes)).expect("valid").qty)
        })
    });
}

fn main() {
    bus_cli::bench::peer_main_if_requested();
    let mut c = Criterion::default().configure_from_args();
    pieces(&mut c);
    c.final_summary();
}
