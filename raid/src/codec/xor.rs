//! XOR parity (raid5): one parity shard, the XOR of the K data shards.
//! Any one lost shard is the XOR of the other K.

use super::{check_encode, check_reconstruct, check_update, xor_into, CodecError, ErasureCodec};

#[derive(Debug, Clone)]
pub struct Xor {
    data_shards: usize,
}

impl Xor {
    pub fn new(data_shards: usize) -> Result<Xor, CodecError> {
        if data_shards == 0 {
            return Err(CodecError::Shape {
                data: data_shards,
                parity: 1,
                reason: "needs at least one data shard",
            });
        }
        Ok(Xor { data_shards })
    }

    /// Writes the XOR of `sources` into `out`.
    fn xor_of<'a>(out: &mut [u8], mut sources: impl Iterator<Item = &'a [u8]>) {
        match sources.next() {
            Some(first) => out.copy_from_slice(first),
            None => out.fill(0),
        }
        for source in sources {
            xor_into(out, source);
        }
    }

    fn fill_missing(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
        data_only: bool,
    ) -> Result<(), CodecError> {
        if check_reconstruct(self, shards, present)? == 0 {
            return Ok(());
        }
        let Some(lost) = present.iter().position(|&p| !p) else {
            return Ok(());
        };
        if data_only && lost >= self.data_shards {
            return Ok(());
        }
        // Take the lost shard's buffer out so the others can be read.
        let target = std::mem::take(&mut shards[lost]);
        Self::xor_of(
            target,
            shards
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != lost)
                .map(|(_, s)| &**s),
        );
        shards[lost] = target;
        Ok(())
    }
}

impl ErasureCodec for Xor {
    fn data_shards(&self) -> usize {
        self.data_shards
    }

    fn parity_shards(&self) -> usize {
        1
    }

    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        check_encode(self, data, parity)?;
        Self::xor_of(parity[0], data.iter().copied());
        Ok(())
    }

    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError> {
        self.fill_missing(shards, present, false)
    }

    fn reconstruct_data(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError> {
        self.fill_missing(shards, present, true)
    }

    fn update_parity(
        &self,
        index: usize,
        delta: &[u8],
        parity: &mut [&mut [u8]],
    ) -> Result<(), CodecError> {
        check_update(self, index, delta, parity)?;
        xor_into(parity[0], delta);
        Ok(())
    }
}
