#Requires -Version 7.0
# AWS.Tools ships its own AWSSDK.Core; users load both modules in one session, in either order.
# These tests load another AWSSDK.Core version into a fresh session first, then BastionTools.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:ModulePath = Get-TestModulePath
    $script:Tools = Get-TestToolsPath
    $script:AwsVars = [Environment]::GetEnvironmentVariables().Keys | Where-Object { $_ -like 'AWS_*' }
    $script:Endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'
}

Describe 'Load-context isolation on PowerShell 7' {
    It 'works when AWSSDK.Core <version> was loaded into the session first' -TestCases @(
        @{ Version = '4.0.3.3' }
        @{ Version = '3.7.402' }
    ) {
        $other = Join-Path $Tools "awssdk.core/$Version/lib/net8.0/AWSSDK.Core.dll"
        $other | Should -Exist
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment @{ AWS_EC2_METADATA_DISABLED = 'true' } -Script @"
`$ErrorActionPreference = 'Stop'
Add-Type -Path '$other'
# Use the other SDK the way AWS.Tools would, before BastionTools arrives.
`$before = [Amazon.Runtime.BasicAWSCredentials]::new('AKIDFIRST', 'first-secret').GetCredentials().AccessKey
Import-Module '$ModulePath'
`$token = New-RdsIamToken -Hostname $Endpoint -UserName app -AccessKey AKIAIOSFODNN7EXAMPLE -SecretKey secretvalue
# The other SDK still answers afterwards.
`$after = [Amazon.Runtime.BasicAWSCredentials]::new('AKIDAFTER', 'after-secret').GetCredentials().AccessKey
'BEFORE=' + `$before
'AFTER=' + `$after
'TOKEN=' + `$token
[AppDomain]::CurrentDomain.GetAssemblies() | Where-Object { `$_.GetName().Name -eq 'AWSSDK.Core' } | ForEach-Object {
    'SDK=' + `$_.GetName().Version + '|' + [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext(`$_).Name + '|' + `$_.Location
}
"@
        $r.Error | Should -BeNullOrEmpty
        $r.Output | Should -Match 'BEFORE=AKIDFIRST'
        $r.Output | Should -Match 'AFTER=AKIDAFTER'
        $r.Output | Should -Match "TOKEN=$([regex]::Escape($Endpoint)):5432/\?Action=connect&DBUser=app&"
        $sdks = @([regex]::Matches($r.Output, 'SDK=([^|]+)\|([^|]+)\|(\S+)') | ForEach-Object { [pscustomobject]@{ Version = $_.Groups[1].Value; Context = $_.Groups[2].Value; Location = $_.Groups[3].Value } })
        $sdks.Count | Should -Be 2
        ($sdks | Where-Object Location -eq $other).Context | Should -Be 'Default'
        ($sdks | Where-Object Location -ne $other).Context | Should -Be 'BastionTools'
    }

    It 'loads the session-encryption dependencies (KMS client, BouncyCastle) into the module''s own context' {
        $sandbox = Start-TestSandbox -World @{ sessionManagerPreferences = @{ kmsKeyId = 'alias/bastion-session-data' } }
        try {
            $a = $sandbox.Aws
            $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment @{ AWS_EC2_METADATA_DISABLED = 'true' } -Script @"
Import-Module '$ModulePath'
Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'echo encrypted-ok' -AccessKey '$($a.AccessKey)' -SecretKey '$($a.SecretKey)' -Region '$($a.Region)' -EndpointUrl '$($a.EndpointUrl)' -Verbose 4>&1
[AppDomain]::CurrentDomain.GetAssemblies() | Where-Object { `$_.GetName().Name -in 'BouncyCastle.Cryptography', 'AWSSDK.KeyManagementService' } | ForEach-Object {
    'ASM=' + `$_.GetName().Name + '|' + [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext(`$_).Name
}
"@
            $r.Error | Should -BeNullOrEmpty
            $r.Output | Should -Match '(?m)^encrypted-ok'
            $r.Output | Should -Match 'encrypted with AWS KMS'
            $r.Output | Should -Match 'ASM=BouncyCastle.Cryptography\|BastionTools'
            $r.Output | Should -Match 'ASM=AWSSDK.KeyManagementService\|BastionTools'
        }
        finally { Stop-TestSandbox $sandbox }
    }

    It 'would fail without the load context (the test above can tell isolation from luck)' {
        $other = Join-Path $Tools 'awssdk.core/3.7.402/lib/net8.0/AWSSDK.Core.dll'
        $dll = Join-Path (Split-Path $ModulePath) 'bin/lib/BastionTools.dll'
        $r = Invoke-ChildPwsh -RemoveEnvironment $AwsVars -Environment @{ AWS_EC2_METADATA_DISABLED = 'true' } -Script @"
Add-Type -Path '$other'
try {
    Import-Module '$dll' -ErrorAction Stop
    New-RdsIamToken -Hostname $Endpoint -UserName app -AccessKey AKIAIOSFODNN7EXAMPLE -SecretKey secretvalue -ErrorAction Stop
    'UNISOLATED-OK'
}
catch { 'UNISOLATED-FAILED: ' + `$_.Exception.GetType().Name }
"@
        $r.Output | Should -Match 'UNISOLATED-FAILED'
        $r.Output | Should -Not -Match 'UNISOLATED-OK'
    }
}
