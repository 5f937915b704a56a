// Command chaincode runs the lineage-ledger provenance contract as a service
// (Fabric's chaincode-as-a-service): the peer connects to it at the address that the
// installed package's connection.json names, instead of building and launching it.
//
//	CHAINCODE_ID              the package id the peer reports for the installed package
//	CHAINCODE_SERVER_ADDRESS  host:port to listen on (loopback in the tests)
package main

import (
	"log"
	"os"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
)

func main() {
	contract := new(LedgerContract)
	contract.Name = "lineage"
	cc, err := contractapi.NewChaincode(contract)
	if err != nil {
		log.Fatalf("building the contract: %v", err)
	}
	cc.DefaultContract = contract.Name
	cc.TransactionSerializer = new(plainSerializer)
	id, address := os.Getenv("CHAINCODE_ID"), os.Getenv("CHAINCODE_SERVER_ADDRESS")
	if id == "" || address == "" {
		log.Fatal("set CHAINCODE_ID and CHAINCODE_SERVER_ADDRESS")
	}
	server := &shim.ChaincodeServer{
		CCID:    id,
		Address: address,
		CC:      cc,
		// The peer reaches this process over loopback only; see docs/fabric.md for TLS.
		TLSProps: shim.TLSProperties{Disabled: true},
	}
	if err := server.Start(); err != nil {
		log.Fatalf("chaincode server: %v", err)
	}
}
