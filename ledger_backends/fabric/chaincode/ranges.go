package main

// Range reads that see the whole range, however large.
//
// A peer hands a chaincode at most ledger.state.totalQueryLimit results (core.yaml, 100000
// by default) from one range query without pagination, and then ends the iterator as if
// the range were exhausted: no error, no sign (Fabric 2.5, core/chaincode/
// query_response_generator.go). An index look-up on a ledger with more blocks than that
// touching one bucket would answer without the newest records. Each paginated query is an
// iterator of its own, with its own count against the limit, and says where it stopped (a
// bookmark, "" once the range is exhausted), so reading page after page sees every key.
// Fabric allows paginated queries only in transactions that write nothing: every caller
// here is a read-only function.

import (
	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
)

// rangePageSize is the keys one page asks for: the batch the peer sends an unpaginated
// iterator per message, so pages cost the messages the batches did. A peer whose limit is
// smaller answers smaller pages, with a bookmark to go on from.
const rangePageSize = 100

// eachInRange calls visit with every key in [start, end) and its value, in key order, until
// visit answers false or an error.
func eachInRange(ctx contractapi.TransactionContextInterface, start, end string,
	visit func(key string, value []byte) (bool, error)) error {
	stub := ctx.GetStub()
	bookmark := ""
	for {
		page, meta, err := stub.GetStateByRangeWithPagination(start, end, rangePageSize, bookmark)
		if err != nil {
			return err
		}
		more, err := visitPage(page, visit)
		page.Close()
		if err != nil || !more {
			return err
		}
		// A page that fetched nothing cannot have moved the bookmark: stop rather than ask
		// for the same page again (a peer configured with a limit of 0 answers so).
		if meta == nil || meta.Bookmark == "" || meta.FetchedRecordsCount == 0 {
			return nil
		}
		bookmark = meta.Bookmark
	}
}

// visitPage visits one page's keys; false when visit asked to stop.
func visitPage(page shim.StateQueryIteratorInterface, visit func(key string, value []byte) (bool, error)) (bool, error) {
	for page.HasNext() {
		kv, err := page.Next()
		if err != nil {
			return false, err
		}
		more, err := visit(kv.Key, kv.Value)
		if err != nil || !more {
			return false, err
		}
	}
	return true, nil
}
