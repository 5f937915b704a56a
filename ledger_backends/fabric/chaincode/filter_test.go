package main

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
)

// mapStub keeps state in a map, and counts reads; only the calls the filter makes are here.
type mapStub struct {
	shim.ChaincodeStubInterface
	state map[string][]byte
	reads int
}

func (s *mapStub) GetState(key string) ([]byte, error) { s.reads++; return s.state[key], nil }
func (s *mapStub) PutState(key string, value []byte) error {
	s.state[key] = value
	return nil
}

func randomIDs(t *testing.T, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		ids[i] = hex.EncodeToString(b[:])
	}
	return ids
}

func TestFilterHasNoFalseNegativesAndFewFalsePositives(t *testing.T) {
	stub := &mapStub{state: map[string][]byte{}}
	stored, absent := randomIDs(t, 20000), randomIDs(t, 20000)
	writer := newIDFilter(stub, "L/x/")
	for _, id := range stored {
		if err := writer.add(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := writer.store(); err != nil {
		t.Fatal(err)
	}
	if len(stub.state) != filterShards {
		t.Fatalf("%d shards written, want %d", len(stub.state), filterShards)
	}
	stub.reads = 0
	reader := newIDFilter(stub, "L/x/") // a later transaction: reads the stored shards
	for _, id := range stored {
		if maybe, err := reader.mayHold(id); err != nil || !maybe {
			t.Fatalf("stored id %s reported absent (%v)", id, err)
		}
	}
	positives := 0
	for _, id := range absent {
		if maybe, _ := reader.mayHold(id); maybe {
			positives++
		}
	}
	if positives > len(absent)/100 {
		t.Fatalf("%d false positives in %d", positives, len(absent))
	}
	if stub.reads != filterShards {
		t.Fatalf("%d shard reads, want one per shard", stub.reads)
	}
}

func TestFilterLeavesStateAloneUntilStoreAndTreatsOddIdsAsMaybe(t *testing.T) {
	stub := &mapStub{state: map[string][]byte{}}
	ids := randomIDs(t, 3)
	ids[1] = ids[0][:1] + ids[1][1:] // same shard as ids[0]
	first := newIDFilter(stub, "L/x/")
	if err := first.add(ids[0]); err != nil {
		t.Fatal(err)
	}
	if len(stub.state) != 0 {
		t.Fatal("add wrote state before store")
	}
	if err := first.store(); err != nil {
		t.Fatal(err)
	}
	before := append([]byte(nil), stub.state["L/x/f/"+ids[0][:1]]...)
	second := newIDFilter(stub, "L/x/")
	if err := second.add(ids[1]); err != nil {
		t.Fatal(err)
	}
	if string(stub.state["L/x/f/"+ids[0][:1]]) != string(before) {
		t.Fatal("add changed the slice read from state")
	}
	if maybe, _ := newIDFilter(stub, "L/x/").mayHold("NOT-HEX"); !maybe {
		t.Fatal("an id that is not hex must be looked up, not ruled out")
	}
	if err := second.add("short"); err == nil {
		t.Fatal("adding a non-digest id must fail")
	}
	stub.state["L/x/f/"+ids[2][:1]] = []byte("corrupt")
	if _, err := newIDFilter(stub, "L/x/").mayHold(ids[2]); err == nil {
		t.Fatal("a shard of the wrong size must be reported")
	}
}
