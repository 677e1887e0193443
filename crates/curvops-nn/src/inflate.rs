//! A small DEFLATE decoder (RFC 1951), with the gzip (RFC 1952) and zip (PKWARE APPNOTE)
//! containers around it — enough to read `.npz` archives (stored or deflated, as written by
//! `numpy.savez` / `savez_compressed`) and gzipped IDX files (MNIST) without dependencies.

use crate::NnError;

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    bit: u32,
    nbits: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, bit: 0, nbits: 0 }
    }
    fn need(&mut self, n: u32) -> Result<(), String> {
        while self.nbits < n {
            let b = *self.data.get(self.pos).ok_or("truncated deflate stream")?;
            self.pos += 1;
            self.bit |= (b as u32) << self.nbits;
            self.nbits += 8;
        }
        Ok(())
    }
    fn bits(&mut self, n: u32) -> Result<u32, String> {
        if n == 0 {
            return Ok(0);
        }
        self.need(n)?;
        let v = self.bit & ((1u32 << n) - 1);
        self.bit >>= n;
        self.nbits -= n;
        Ok(v)
    }
    fn align(&mut self) {
        self.bit = 0;
        self.nbits = 0;
    }
}

/// A canonical Huffman code: counts per length and symbols sorted by code.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Result<Self, String> {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offs = [0u16; 16];
        for i in 1..16 {
            offs[i] = offs[i - 1] + counts[i - 1];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        Ok(Self { counts, symbols })
    }
    fn decode(&self, b: &mut Bits) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= b.bits(1)? as i32;
            let count = self.counts[len] as i32;
            if code - count < first {
                return Ok(self.symbols[(index + (code - first)) as usize]);
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err("invalid Huffman code in deflate stream".into())
    }
}

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

fn codes(b: &mut Bits, out: &mut Vec<u8>, lit: &Huffman, dist: &Huffman) -> Result<(), String> {
    loop {
        let sym = lit.decode(b)?;
        match sym {
            0..=255 => out.push(sym as u8),
            256 => return Ok(()),
            _ => {
                let i = (sym - 257) as usize;
                if i >= 29 {
                    return Err("invalid length symbol in deflate stream".into());
                }
                let len = LEN_BASE[i] as usize + b.bits(LEN_EXTRA[i] as u32)? as usize;
                let ds = dist.decode(b)? as usize;
                if ds >= 30 {
                    return Err("invalid distance symbol in deflate stream".into());
                }
                let d = DIST_BASE[ds] as usize + b.bits(DIST_EXTRA[ds] as u32)? as usize;
                if d > out.len() {
                    return Err("distance too far back in deflate stream".into());
                }
                let start = out.len() - d;
                for k in 0..len {
                    let v = out[start + k];
                    out.push(v);
                }
            }
        }
    }
}

/// Decompresses a raw DEFLATE stream; returns the data and the number of input bytes used.
pub fn inflate(data: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut b = Bits::new(data);
    let mut out = Vec::new();
    loop {
        let last = b.bits(1)?;
        match b.bits(2)? {
            0 => {
                b.align();
                let p = b.pos;
                if p + 4 > data.len() {
                    return Err("truncated stored block".into());
                }
                let len = u16::from_le_bytes([data[p], data[p + 1]]) as usize;
                let end = p + 4 + len;
                if end > data.len() {
                    return Err("truncated stored block".into());
                }
                out.extend_from_slice(&data[p + 4..end]);
                b.pos = end;
            }
            1 => {
                let mut l = [0u8; 288];
                l[..144].fill(8);
                l[144..256].fill(9);
                l[256..280].fill(7);
                l[280..].fill(8);
                let lit = Huffman::new(&l)?;
                let dist = Huffman::new(&[5u8; 30])?;
                codes(&mut b, &mut out, &lit, &dist)?;
            }
            2 => {
                let hlit = b.bits(5)? as usize + 257;
                let hdist = b.bits(5)? as usize + 1;
                let hclen = b.bits(4)? as usize + 4;
                const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
                let mut cl = [0u8; 19];
                for &o in ORDER.iter().take(hclen) {
                    cl[o] = b.bits(3)? as u8;
                }
                let clh = Huffman::new(&cl)?;
                let mut lens = vec![0u8; hlit + hdist];
                let mut i = 0;
                while i < hlit + hdist {
                    let sym = clh.decode(&mut b)?;
                    let (val, rep) = match sym {
                        0..=15 => (sym as u8, 1),
                        16 => {
                            let prev = *lens.get(i.wrapping_sub(1)).ok_or("repeat with no previous length")?;
                            (prev, 3 + b.bits(2)? as usize)
                        }
                        17 => (0, 3 + b.bits(3)? as usize),
                        _ => (0, 11 + b.bits(7)? as usize),
                    };
                    if i + rep > lens.len() {
                        return Err("too many code lengths in deflate stream".into());
                    }
                    lens[i..i + rep].fill(val);
                    i += rep;
                }
                let lit = Huffman::new(&lens[..hlit])?;
                let dist = Huffman::new(&lens[hlit..])?;
                codes(&mut b, &mut out, &lit, &dist)?;
            }
            _ => return Err("invalid deflate block type".into()),
        }
        if last == 1 {
            return Ok((out, b.pos));
        }
    }
}

/// Decompresses a gzip file (all members).
pub fn gunzip(data: &[u8], path: &str) -> Result<Vec<u8>, NnError> {
    let bad = |m: &str| NnError::tensor(path, format!("gzip: {m}"));
    let mut out = Vec::new();
    let mut p = 0;
    while p + 10 <= data.len() && data[p] == 0x1f && data[p + 1] == 0x8b {
        if data[p + 2] != 8 {
            return Err(bad("unsupported compression method"));
        }
        let flags = data[p + 3];
        let mut q = p + 10;
        if flags & 4 != 0 {
            let xlen = u16::from_le_bytes([data[q], data[q + 1]]) as usize;
            q += 2 + xlen;
        }
        for bit in [8u8, 16] {
            if flags & bit != 0 {
                while q < data.len() && data[q] != 0 {
                    q += 1;
                }
                q += 1;
            }
        }
        if flags & 2 != 0 {
            q += 2;
        }
        if q > data.len() {
            return Err(bad("truncated header"));
        }
        let (d, used) = inflate(&data[q..]).map_err(|e| bad(&e))?;
        out.extend_from_slice(&d);
        p = q + used + 8;
    }
    if out.is_empty() && !data.is_empty() {
        return Err(bad("not a gzip file"));
    }
    Ok(out)
}

/// The members of a zip archive: `(name, contents)` (stored or deflated entries).
pub fn unzip(data: &[u8], path: &str) -> Result<Vec<(String, Vec<u8>)>, NnError> {
    let bad = |m: String| NnError::tensor(path, format!("zip: {m}"));
    let u16le = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]) as usize;
    let u32le = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
    // end of central directory
    let eocd = (0..data.len().saturating_sub(21))
        .rev()
        .find(|&i| data[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no end of central directory (not a zip/.npz file)".into()))?;
    let count = u16le(eocd + 10);
    let mut cd = u32le(eocd + 16);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if cd + 46 > data.len() || data[cd..cd + 4] != [0x50, 0x4b, 0x01, 0x02] {
            return Err(bad("bad central directory".into()));
        }
        let method = u16le(cd + 10);
        let mut csize = u32le(cd + 20);
        let mut usize_ = u32le(cd + 24);
        let nlen = u16le(cd + 28);
        let xlen = u16le(cd + 30);
        let clen = u16le(cd + 32);
        let mut local = u32le(cd + 42);
        let name = String::from_utf8_lossy(&data[cd + 46..cd + 46 + nlen]).to_string();
        // zip64 extra field
        let mut x = cd + 46 + nlen;
        let xend = x + xlen;
        while x + 4 <= xend {
            let (id, sz) = (u16le(x), u16le(x + 2));
            if id == 1 {
                let mut f = x + 4;
                let rd = |f: usize| u64::from_le_bytes(data[f..f + 8].try_into().unwrap()) as usize;
                if usize_ == 0xffff_ffff {
                    usize_ = rd(f);
                    f += 8;
                }
                if csize == 0xffff_ffff {
                    csize = rd(f);
                    f += 8;
                }
                if local == 0xffff_ffff {
                    local = rd(f);
                }
            }
            x += 4 + sz;
        }
        if local + 30 > data.len() {
            return Err(bad(format!("entry '{name}': bad local header offset")));
        }
        let start = local + 30 + u16le(local + 26) + u16le(local + 28);
        if start + csize > data.len() {
            return Err(bad(format!("entry '{name}' is truncated")));
        }
        let raw = &data[start..start + csize];
        let content = match method {
            0 => raw.to_vec(),
            8 => inflate(raw).map_err(|e| bad(format!("entry '{name}': {e}")))?.0,
            m => return Err(bad(format!("entry '{name}': compression method {m} is not supported"))),
        };
        if content.len() != usize_ {
            return Err(bad(format!("entry '{name}': size mismatch")));
        }
        out.push((name, content));
        cd += 46 + nlen + xlen + clen;
    }
    Ok(out)
}
