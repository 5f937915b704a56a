package main

// A Bloom filter over a ledger's record ids, kept in state beside the id keys, so that
// refusing duplicates (Append) and answering Known do not cost a state round trip per record.
//
// A filter never forgets an id, so "not in the filter" means "not stored": such a record
// needs no GetState. "Maybe in the filter" is settled by reading the record's id key, as
// before. So the answers are exact either way; the filter only decides which reads can be
// skipped. Each append reads the shards its records fall in and writes them back with the
// new ids set, in the same transaction as the records: a concurrent append that changed a
// shard (or the head, which every append rewrites) makes the later one fail MVCC validation.
//
// Layout: 16 shards, by the id's first hex digit, at L/<ledger>/f/<digit>, 32 KiB each (2^18
// bits), 3 probes. Ids are BLAKE3 digests (the chaincode recomputes them before adding one),
// so their hex digits are uniform and give the probe positions directly, 18 bits from each
// run of 5 digits. The false-positive rate is under 1% up to about 300,000 records and
// about 13% at a million; past that appends slowly return to one id read per record.
//
// Ledgers whose first block was stored by an older chaincode have no filter; their head
// entry lacks the filter mark and they keep reading every id key.

import (
	"fmt"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
)

const (
	filterShards    = 16
	filterShardBits = 1 << 18
	filterProbes    = 3
	filterMark      = "f1" // fourth field of the head entry: this ledger keeps the filter
)

type idFilter struct {
	stub   shim.ChaincodeStubInterface
	key    string // L/<ledger>/f/
	shards [filterShards][]byte
	loaded [filterShards]bool
	dirty  [filterShards]bool
}

func newIDFilter(stub shim.ChaincodeStubInterface, p string) *idFilter {
	return &idFilter{stub: stub, key: p + "f/"}
}

// probes gives an id's shard and bit positions; ok is false for a string that is not a
// lowercase hex id (no such id can be stored, but callers then read its key to be sure).
func probes(id string) (shard int, bits [filterProbes]uint32, ok bool) {
	if len(id) != 64 {
		return 0, bits, false
	}
	digits := id[:1+5*filterProbes]
	for i := 0; i < len(digits); i++ {
		if c := digits[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0, bits, false
		}
	}
	shard = fromHex(digits[0])
	for probe := 0; probe < filterProbes; probe++ {
		value := 0
		for _, c := range []byte(digits[1+5*probe : 6+5*probe]) {
			value = value<<4 | fromHex(c)
		}
		bits[probe] = uint32(value) & (filterShardBits - 1)
	}
	return shard, bits, true
}

// shard reads shard i once per transaction; nil means no id has fallen in it yet.
func (f *idFilter) shard(i int) ([]byte, error) {
	if !f.loaded[i] {
		raw, err := f.stub.GetState(f.key + fmt.Sprintf("%x", i))
		if err != nil {
			return nil, err
		}
		if raw != nil && len(raw) != filterShardBits/8 {
			return nil, fmt.Errorf("corrupt id filter shard %x (%d bytes)", i, len(raw))
		}
		f.shards[i], f.loaded[i] = raw, true
	}
	return f.shards[i], nil
}

// mayHold is false only when the id is certainly not stored.
func (f *idFilter) mayHold(id string) (bool, error) {
	shard, bits, ok := probes(id)
	if !ok {
		return true, nil
	}
	data, err := f.shard(shard)
	if err != nil || data == nil {
		return false, err
	}
	for _, bit := range bits {
		if data[bit>>3]&(1<<(bit&7)) == 0 {
			return false, nil
		}
	}
	return true, nil
}

// add sets the id's bits in this transaction's copy of its shard (see store).
func (f *idFilter) add(id string) error {
	shard, bits, ok := probes(id)
	if !ok {
		return fmt.Errorf("record id %.16q is not a hex digest", id)
	}
	data, err := f.shard(shard)
	if err != nil {
		return err
	}
	if !f.dirty[shard] { // never write into the slice the shim handed us
		fresh := make([]byte, filterShardBits/8)
		copy(fresh, data)
		f.shards[shard], f.dirty[shard] = fresh, true
	}
	for _, bit := range bits {
		f.shards[shard][bit>>3] |= 1 << (bit & 7)
	}
	return nil
}

// store writes every shard this transaction changed (in shard order: both orgs' peers
// must produce identical write sets).
func (f *idFilter) store() error {
	for i := 0; i < filterShards; i++ {
		if f.dirty[i] {
			if err := f.stub.PutState(f.key+fmt.Sprintf("%x", i), f.shards[i]); err != nil {
				return err
			}
		}
	}
	return nil
}
