package main

// Hashes exactly as lineage_ledger computes them (core/_log/merkle.py, core/_model.py):
// record id = BLAKE3(canonical record bytes), block id = BLAKE3(canonical header bytes),
// Merkle root of the RFC 6962 / 9162 shape with BLAKE3: leaf = H(0x00 || id bytes),
// node = H(0x01 || left || right), an odd last node is promoted unchanged, and the empty
// tree's root is H(""). testdata/vectors.json, written by the Python core, pins both sides.

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

func digestHex(data []byte) string {
	sum := blake3.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func leafHash(id []byte) [32]byte {
	buf := make([]byte, 0, 1+len(id))
	buf = append(buf, 0x00)
	buf = append(buf, id...)
	return blake3.Sum256(buf)
}

func nodeHash(left, right [32]byte) [32]byte {
	var buf [65]byte
	buf[0] = 0x01
	copy(buf[1:33], left[:])
	copy(buf[33:], right[:])
	return blake3.Sum256(buf[:])
}

// merkleRoot takes record ids as lowercase hex and returns the root as lowercase hex.
func merkleRoot(ids []string) (string, error) {
	if len(ids) == 0 {
		return digestHex(nil), nil
	}
	level := make([][32]byte, len(ids))
	for i, id := range ids {
		raw, err := hex.DecodeString(id)
		if err != nil {
			return "", fmt.Errorf("record id %q is not hex: %w", id, err)
		}
		level[i] = leafHash(raw)
	}
	for len(level) > 1 {
		next := make([][32]byte, 0, (len(level)+1)/2)
		for i := 0; i+1 < len(level); i += 2 {
			next = append(next, nodeHash(level[i], level[i+1]))
		}
		if len(level)%2 == 1 {
			next = append(next, level[len(level)-1])
		}
		level = next
	}
	return hex.EncodeToString(level[0][:]), nil
}
