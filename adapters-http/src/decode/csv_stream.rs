//! Incremental CSV decoding: the first row names the fields, every other row
//! becomes a record of strings (as `cute` reads CSV results). Quoted fields,
//! embedded separators and line breaks are handled by `csv-core`.

use serde_json::{Map, Value};
use sluicegate_core::Record;

/// Decodes CSV fed chunk by chunk.
pub(crate) struct CsvDecoder {
    reader: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
    used: usize,
    ended: usize,
    header: Option<Vec<String>>,
    line: u64,
}

impl CsvDecoder {
    pub(crate) fn new() -> Self {
        Self {
            reader: csv_core::Reader::new(),
            fields: vec![0; 4096],
            ends: vec![0; 64],
            used: 0,
            ended: 0,
            header: None,
            line: 0,
        }
    }

    /// Feeds a chunk; complete rows become records in `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<Record>) -> Result<(), String> {
        loop {
            let (result, read, wrote, ended) = self.reader.read_record(
                input,
                &mut self.fields[self.used..],
                &mut self.ends[self.ended..],
            );
            input = &input[read..];
            // `csv-core` counts field ends from the start of the record's output,
            // across calls, so they index `fields` directly.
            self.used += wrote;
            self.ended += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => return Ok(()),
                csv_core::ReadRecordResult::OutputFull => {
                    let len = self.fields.len();
                    self.fields.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len();
                    self.ends.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::Record => self.record(out)?,
                csv_core::ReadRecordResult::End => return Ok(()),
            }
        }
    }

    fn record(&mut self, out: &mut Vec<Record>) -> Result<(), String> {
        self.line += 1;
        let mut start = 0;
        let mut values = Vec::with_capacity(self.ended);
        for &end in &self.ends[..self.ended] {
            let text = std::str::from_utf8(&self.fields[start..end])
                .map_err(|_| format!("CSV line {} is not valid UTF-8", self.line))?;
            values.push(text.to_owned());
            start = end;
        }
        self.used = 0;
        self.ended = 0;
        match &self.header {
            None => self.header = Some(values),
            Some(header) => {
                if values.len() == 1 && values[0].is_empty() {
                    return Ok(()); // a blank line
                }
                if values.len() != header.len() {
                    return Err(format!(
                        "CSV line {} has {} fields, the header has {}",
                        self.line,
                        values.len(),
                        header.len()
                    ));
                }
                let record: Map<String, Value> = header
                    .iter()
                    .cloned()
                    .zip(values.into_iter().map(Value::String))
                    .collect();
                out.push(record);
            }
        }
        Ok(())
    }

    /// Ends the input: the last row, if it had no line break.
    pub(crate) fn finish(mut self, out: &mut Vec<Record>) -> Result<(), String> {
        self.feed(&[], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(text: &str, chunk: usize) -> Result<Vec<Value>, String> {
        let mut d = CsvDecoder::new();
        let mut out = Vec::new();
        for c in text.as_bytes().chunks(chunk.max(1)) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out.into_iter().map(Value::Object).collect())
    }

    #[test]
    fn rows_become_string_records_at_any_chunking() {
        let text = "id,name,note\n1,Mug,\"a, b\"\n2,\"Tea \"\"pot\"\"\",\"two\nlines\"\n3,Vase,";
        for chunk in [1, 2, 5, 1000] {
            assert_eq!(
                decode(text, chunk).unwrap(),
                vec![
                    json!({"id": "1", "name": "Mug", "note": "a, b"}),
                    json!({"id": "2", "name": "Tea \"pot\"", "note": "two\nlines"}),
                    json!({"id": "3", "name": "Vase", "note": ""}),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn ragged_rows_are_errors_naming_the_line() {
        let err = decode("a,b\n1,2\n3\n", 4).unwrap_err();
        assert_eq!(err, "CSV line 3 has 1 fields, the header has 2");
    }
}
