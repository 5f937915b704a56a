// Command chaincode runs the lineage-ledger provenance contract as a service
// (Fabric's chaincode-as-a-service): the peer connects to it at the address that the
// installed package's connection.json names, instead of building and launching it.
//
//	CHAINCODE_ID                  the package id the peer reports for the installed package
//	CHAINCODE_SERVER_ADDRESS      host:port to listen on
//	CHAINCODE_TLS_CERT_FILE       PEM certificate and key the server presents to peers
//	CHAINCODE_TLS_KEY_FILE
//	CHAINCODE_TLS_CLIENT_CA_FILE  PEM CA certificates of the client certificates peers must
//	                              present (optional: without it, any TLS client is served)
//	CHAINCODE_TLS_DISABLED=true   serve without TLS instead (a peer on the same host only)
package main

import (
	"fmt"
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
	tls, err := tlsProperties()
	if err != nil {
		log.Fatal(err)
	}
	server := &shim.ChaincodeServer{CCID: id, Address: address, CC: cc, TLSProps: tls}
	if err := server.Start(); err != nil {
		log.Fatalf("chaincode server: %v", err)
	}
}

// tlsProperties: TLS unless it is switched off explicitly, so that a missing setting never
// leaves the peer's link to the chaincode readable on the network.
func tlsProperties() (shim.TLSProperties, error) {
	if os.Getenv("CHAINCODE_TLS_DISABLED") == "true" {
		return shim.TLSProperties{Disabled: true}, nil
	}
	certFile, keyFile := os.Getenv("CHAINCODE_TLS_CERT_FILE"), os.Getenv("CHAINCODE_TLS_KEY_FILE")
	if certFile == "" || keyFile == "" {
		return shim.TLSProperties{}, fmt.Errorf("set CHAINCODE_TLS_CERT_FILE and CHAINCODE_TLS_KEY_FILE, or CHAINCODE_TLS_DISABLED=true")
	}
	props := shim.TLSProperties{}
	var err error
	if props.Cert, err = os.ReadFile(certFile); err != nil {
		return props, err
	}
	if props.Key, err = os.ReadFile(keyFile); err != nil {
		return props, err
	}
	if caFile := os.Getenv("CHAINCODE_TLS_CLIENT_CA_FILE"); caFile != "" {
		if props.ClientCACerts, err = os.ReadFile(caFile); err != nil {
			return props, err
		}
	}
	return props, nil
}
