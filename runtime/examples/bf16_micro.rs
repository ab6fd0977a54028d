use std::arch::asm;
use std::time::Instant;
use petal_runtime::kernels;
#[repr(C, align(64))]
struct Cfg([u8; 64]);
fn main() {
    let _ = kernels::active();
    let mut c = [0u8; 64];
    c[0] = 1;
    for t in 0..8 { c[16 + 2 * t] = 64; c[48 + t] = 16; }
    let cfg = Cfg(c);
    let buf = vec![0u8; 1 << 16];
    let reps = 1_000_000usize;
    for round in 0..3 {
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &cfg);
        let t = Instant::now();
        for i in 0..reps {
            let p = buf.as_ptr().add((i % 16) * 1024);
            asm!("tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm6, [{a} + {s}*1]", "tdpbf16ps tmm0, tmm4, tmm6", "tileloadd tmm7, [{a} + {s}*1]", "tdpbf16ps tmm1, tmm4, tmm7", "tileloadd tmm5, [{a} + {s}*1]","tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7", a = in(reg) p, s = in(reg) 64usize);
        }
        let dt = t.elapsed().as_secs_f64();
        println!("[{round}] 2x2 (4 loads 4 tdp): {:.1} ns per tdp", dt * 1e9 / (4 * reps) as f64);
        let t = Instant::now();
        for i in 0..reps {
            let p = buf.as_ptr().add((i % 16) * 1024);
            asm!("tileloadd tmm2, [{a} + {s}*1]", "tileloadd tmm3, [{a} + {s}*1]", "tileloadd tmm4, [{a} + {s}*1]",
                 "tdpbf16ps tmm0, tmm2, tmm4", "tdpbf16ps tmm1, tmm3, tmm4",
                 "tileloadd tmm5, [{a} + {s}*1]", "tileloadd tmm6, [{a} + {s}*1]", "tileloadd tmm7, [{a} + {s}*1]",
                 "tdpbf16ps tmm0, tmm5, tmm7", "tdpbf16ps tmm1, tmm6, tmm7",
                 a = in(reg) p, s = in(reg) 64usize);
        }
        let dt = t.elapsed().as_secs_f64();
        println!("[{round}] 2x1 double-buffered (6 loads 4 tdp): {:.1} ns per tdp", dt * 1e9 / (4 * reps) as f64);
        let t = Instant::now();
        for i in 0..reps {
            let p = buf.as_ptr().add((i % 16) * 1024);
            asm!("tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm6, [{a} + {s}*1]", "tileloadd tmm7, [{a} + {s}*1]",
                 "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                 "tileloadd tmm5, [{a} + {s}*1]",
                 "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                 a = in(reg) p, s = in(reg) 64usize);
        }
        let dt = t.elapsed().as_secs_f64();
        println!("[{round}] 2x2 loads first: {:.1} ns per tdp", dt * 1e9 / (4 * reps) as f64);
        let t = Instant::now();
        for _ in 0..reps {
            asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7");
        }
        let dt = t.elapsed().as_secs_f64();
        println!("[{round}] tdp only: {:.1} ns per tdp", dt * 1e9 / (4 * reps) as f64);
        asm!("tilerelease");
    }
    }
}
