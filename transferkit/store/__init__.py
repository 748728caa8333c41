"""Files on disk, trusted or not: atomic writes and checksummed checkpoints (checkpoint), checked
readers of files we did not write (safety), run folders with their lock (runfolder), output folders
(outfolder), the data fingerprint a resume is checked against (fingerprint) and environment.json
(environment). The ground floor: it imports nothing from transferkit but `errors` (and the version
and allocator state it records)."""
