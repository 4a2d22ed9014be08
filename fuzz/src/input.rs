//! A tiny input format shared by the structured targets: bytes read front to back, every
//! read succeeds (missing bytes read as zero, a length prefix is cut to what is left), so every
//! input is valid and a mutation of one field leaves the others in place.

/// Reads fields off the front of a fuzz input.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A big-endian u16 (missing bytes are 0).
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Bytes prefixed by a one-byte length.
    pub fn bytes8(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }

    /// Bytes prefixed by a two-byte length.
    pub fn bytes16(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Writes inputs in the format [`Reader`] reads (seeds).
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// Appends one byte.
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    /// Appends bytes with a one-byte length (cut to 255).
    pub fn bytes8(&mut self, b: &[u8]) -> &mut Self {
        let b = &b[..b.len().min(255)];
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }

    /// Appends bytes with a two-byte length (cut to 65535).
    pub fn bytes16(&mut self, b: &[u8]) -> &mut Self {
        let b = &b[..b.len().min(65535)];
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
}
