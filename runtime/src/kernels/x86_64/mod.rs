//! x86_64 kernels.

#[cfg(feature = "std")]
pub mod amx;
pub mod avx2;
pub mod avx2_math;
pub mod avx512;

#[cfg(feature = "std")]
use alloc::vec::Vec;

#[cfg(feature = "std")]
use super::linear::tile_panels_per_block;
#[cfg(feature = "std")]
use super::pack::{self, ActBlock, OffsetPanel, Panel16, Panel8, PANEL_TOKENS};
#[cfg(feature = "std")]
use super::rows::RowsMut;
#[cfg(feature = "std")]
use super::set::{
    check_panel_rows, check_tile, check_tile_pack, Bf16Kernels, Bf16Strip, KernelSet, PanelProduct,
    TileOperands, AMX_ROW_GROUPS,
};
#[cfg(feature = "std")]
use crate::quant::{TensorType, QK};
/// The AVX2 + FMA + F16C set, when this CPU has them.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub fn avx2() -> Option<KernelSet> {
    if !(std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; length asserted.
        unsafe { avx2::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { avx2::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { avx2::dot_q8_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { avx2::dot_q4_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; length asserted.
        unsafe { avx2::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { avx2::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { avx2::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { avx2::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn quantize(x: &[f32], out: &mut Vec<ActBlock>) {
        assert!(x.len().is_multiple_of(QK));
        // SAFETY: this set is only handed out after detecting AVX2; length asserted.
        unsafe { avx2::quantize_activations(x, out) }
    }
    #[allow(unsafe_code)]
    fn pack_panel16(x: &[f32], cols: usize, out: &mut Vec<Panel16>) {
        pack::pack_panel16_with(x, cols, out, |chunk| {
            assert_eq!(chunk.len(), QK);
            // SAFETY: this set is only handed out after detecting AVX2; length asserted.
            unsafe { avx2::quantize_block16(chunk) }
        })
    }
    #[allow(unsafe_code)]
    fn pack_offset(x: &[f32], cols: usize, out: &mut Vec<OffsetPanel>) {
        assert!(
            cols.is_multiple_of(QK)
                && x.len().is_multiple_of(cols.max(1))
                && x.len() / cols.max(1) <= PANEL_TOKENS
        );
        // SAFETY: this set is only handed out after detecting AVX2; shape asserted.
        unsafe { avx2::pack_offset_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn pack_tile(x: &[f32], cols: usize, out: &mut [pack::TilePanel]) {
        check_tile_pack(x, cols, out, 1);
        // SAFETY: this set is only handed out after detecting AVX2; shape asserted.
        unsafe { avx2::pack_tile_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: this set is only handed out after detecting AVX2 and FMA; lengths asserted.
        unsafe { avx2::layer_norm(x, w, b, eps) }
    }
    Some(KernelSet {
        name: "avx2",
        dot_q8_0: q8,
        dot_q8_0_2x4: q8_2x4,
        dot_q8_0_2x8: Some(q8_2x8),
        dot_q8_0_2x8_offset: None,
        dot_q8_0_16x16: None,
        dot_q4_0_16x16: None,
        dot_q4_0_2x8: Some(q4_2x8),
        dot_q4_0_2x8_split: None,
        dot_q4_0: q4,
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        quantize,
        pack_panel16,
        pack_offset,
        pack_tile,
        pack_tile16: pack::pack_tile_panel16,
        bf16: None,
    })
}

/// Every set with VNNI's products (bytes for Q8_0, 16-bit pairs for Q4_0) this CPU runs
/// (AVX-512 VNNI on 256-bit vectors, AVX-VNNI, and AMX over the preferred of them), the
/// preferred last.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub fn avx2_vnni_variants() -> Vec<KernelSet> {
    let Some(base) = avx2() else {
        return Vec::new();
    };
    #[allow(unsafe_code)]
    fn q8_2x8_avxvnni(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C and AVX-VNNI; lengths
        // asserted.
        unsafe { avx2::dot_q8_0_2x8_avxvnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_avx512vnni(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C, AVX-512 VNNI and VL;
        // lengths asserted.
        unsafe { avx2::dot_q8_0_2x8_avx512vnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8_avxvnni(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C and AVX-VNNI; lengths
        // asserted.
        unsafe { avx2::dot_q4_0_2x8_avxvnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8_avx512vnni(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C, AVX-512 VNNI and VL;
        // lengths asserted.
        unsafe { avx2::dot_q4_0_2x8_avx512vnni(w, p) }
    }
    let set = |name, q8: PanelProduct<OffsetPanel>, q4: PanelProduct<Panel16>| KernelSet {
        name,
        dot_q8_0_2x8_offset: Some(q8),
        dot_q4_0_2x8: Some(q4),
        ..base
    };
    let mut v = Vec::new();
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
        v.push(set("avx2+avx512vnni", q8_2x8_avx512vnni, q4_2x8_avx512vnni));
    }
    // The same kernels in VEX encoding (no AVX-512 state to manage), preferred.
    if std::is_x86_feature_detected!("avxvnni") {
        v.push(set("avx2+avxvnni", q8_2x8_avxvnni, q4_2x8_avxvnni));
    }
    /// The AMX tile product for Q8_0 (`Q4` false) or Q4_0 (true) weights, after asserting the
    /// bounds it relies on: the shapes of [`KernelSet::dot_q8_0_16x16`], the rows within `w`
    /// and `y`.
    #[allow(unsafe_code)]
    fn amx_16x16<const Q4: bool>(op: &TileOperands<'_>, y: &mut RowsMut<'_>) {
        use amx::AMX_ROWS;
        let TileOperands {
            w,
            row_bytes,
            nb,
            panels: p,
            bias,
            groups,
            ntok,
            ..
        } = *op;
        let ty = if Q4 {
            TensorType::Q4_0
        } else {
            TensorType::Q8_0
        };
        let blocks = nb * ty.block_bytes();
        assert!(groups <= AMX_ROW_GROUPS && nb > 0 && nb <= pack::TILE_MAX_BLOCKS);
        let tiles = ntok.div_ceil(pack::TILE_PANEL_TOKENS);
        assert!(p.len() == tile_panels_per_block(ty) * nb * tiles);
        assert!(y.width() >= AMX_ROWS * groups);
        assert!(ntok == 0 || groups == 0 || (ntok - 1) * y.ld() + AMX_ROWS * groups <= y.len());
        assert!(bias.is_empty() || bias.len() >= AMX_ROWS * groups);
        assert!(
            row_bytes >= blocks
                && (groups == 0 || w.len() >= (AMX_ROWS * groups - 1) * row_bytes + blocks)
        );
        let (ptr, ld, _) = y.raw();
        // SAFETY: only handed out after `amx::available()` and detecting AVX2, AVX-512F and
        // F16C; lengths asserted; the kernel writes `ptr[t * ld + c]` for `t < ntok`,
        // `c < 16 * groups`, within the holder's columns and buffer (asserted).
        unsafe { amx::dot_16x16::<Q4>(op, ptr, ld) }
    }
    #[allow(unsafe_code)]
    fn pack_tile512(x: &[f32], cols: usize, out: &mut [pack::TilePanel]) {
        check_tile_pack(x, cols, out, 1);
        // SAFETY: only handed out after detecting AVX2 and AVX-512F; shape asserted.
        unsafe { avx512::pack_tile_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn pack_tile16_512(x: &[f32], cols: usize, out: &mut [pack::TilePanel]) {
        check_tile_pack(x, cols, out, 2);
        // SAFETY: only handed out after detecting AVX2 and AVX-512F; shape asserted.
        unsafe { avx512::pack_tile_panel16(x, cols, out) }
    }
    // AMX for chunks of sixteen rows, the best VNNI kernel for the rest.
    if let Some(&best) = v.last() {
        if amx::available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("f16c")
        {
            v.push(KernelSet {
                name: "avx2+amx",
                dot_q8_0_16x16: Some(amx_16x16::<false>),
                dot_q4_0_16x16: Some(amx_16x16::<true>),
                // Its activations packed on 512-bit vectors too.
                pack_tile: pack_tile512,
                pack_tile16: pack_tile16_512,
                ..best
            });
        }
    }
    #[allow(unsafe_code)]
    fn dequantize_bf16(ty: TensorType, data: &[u8], nr: usize, k: usize, out: &mut [u16]) {
        let (q4, bytes) = match ty {
            TensorType::Q8_0 => (false, pack::Q8_0_BLOCK_BYTES),
            TensorType::Q4_0 => (true, pack::Q4_0_BLOCK_BYTES),
            _ => return pack::dequantize_strip_bf16(ty, data, nr, k, out),
        };
        assert!(
            k.is_multiple_of(QK)
                && nr <= pack::BF16_STRIP_ROWS
                && out.len() >= pack::BF16_STRIP_ROWS * k
        );
        assert!(data.len() >= nr * (k / QK) * bytes, "short {ty:?} rows");
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX2, F16C and AVX-512F; lengths asserted.
        unsafe { amx::dequantize_strip_bf16(q4, data, nr, k, out) }
    }
    #[allow(unsafe_code)]
    fn strip_bf16(x: &[f32], k: usize, out: &mut [u16]) {
        assert!(k.is_multiple_of(QK) && out.len() >= pack::BF16_STRIP_ROWS * k);
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX-512F; lengths asserted.
        unsafe { amx::pack_bf16_strip(x, k, out) }
    }
    #[allow(unsafe_code)]
    fn columns_bf16(x: &[f32], ld: usize, n: usize, k: usize, out: &mut [u16]) {
        assert!(k.is_multiple_of(QK) && n <= k && out.len() >= pack::BF16_STRIP_ROWS * k);
        assert!(
            n == 0 || x.len() >= (n - 1) * ld + pack::BF16_STRIP_ROWS,
            "short rows"
        );
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX-512F; lengths asserted.
        unsafe { amx::pack_bf16_columns(x, ld, n, k, out) }
    }
    #[allow(unsafe_code)]
    fn pack_bf16(x: &[f32], cols: usize, out: &mut [u16]) {
        assert!(out.len() >= cols * pack::BF16_TILE_TOKENS);
        // SAFETY: as above; the tile's room asserted.
        unsafe { amx::pack_bf16_tile(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn gemm_bf16(s: &Bf16Strip<'_>, out: &mut RowsMut<'_>) {
        let Bf16Strip {
            a,
            k,
            b,
            nt,
            nr,
            ntok,
            ..
        } = *s;
        let t = pack::BF16_TILE_TOKENS;
        assert!(k.is_multiple_of(32) && a.len() >= 32 * k && b.len() >= nt * t * k);
        assert!(nr <= 32 && nr <= out.width() && ntok <= nt * t);
        assert!(ntok == 0 || out.len() >= (ntok - 1) * out.ld() + nr);
        let (y, ld, _) = out.raw();
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F;
        // lengths asserted; the kernel writes columns below `nr` (within the holder's) of rows
        // below `ntok` (within the buffer).
        unsafe { amx::gemm_bf16_32xn(s, y, ld) }
    }
    #[allow(unsafe_code)]
    fn softmax512(x: &mut [f32]) {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { avx512::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn exp_sum512(x: &mut [f32]) -> f32 {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { avx512::exp_sum(x) }
    }
    #[allow(unsafe_code)]
    fn layer_norm512(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F;
        // lengths asserted.
        unsafe { avx512::layer_norm(x, w, b, eps) }
    }
    #[allow(unsafe_code)]
    fn gelu512(x: &mut [f32]) {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { avx512::gelu(x) }
    }
    if let Some(&best) = v.last() {
        if amx::available_bf16() && std::is_x86_feature_detected!("avx512f") {
            // The element-wise kernels on 512-bit vectors too.
            v.push(KernelSet {
                name: "avx2+amx-bf16",
                softmax: softmax512,
                gelu: gelu512,
                layer_norm: layer_norm512,
                bf16: Some(Bf16Kernels {
                    dequantize: dequantize_bf16,
                    pack: pack_bf16,
                    strip: strip_bf16,
                    columns: columns_bf16,
                    gemm: gemm_bf16,
                    exp_sum: exp_sum512,
                }),
                ..best
            });
        }
    }
    v
}
